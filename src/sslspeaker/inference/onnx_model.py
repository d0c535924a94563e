"""A torch-free ``SpeakerEncoder`` over onnxruntime: ``OnnxSpeakerEncoder.load("m.onnx")``.

The graph ``sslspeaker export ... --onnx m.onnx`` writes takes the waveform and computes the
log-mel front end itself (``onnx_export.DFTLogMel``), so nothing here needs torch: audio is read
with soundfile (resampled with soxr), the graph gives the normalised embeddings, and scores,
decisions and enrolment are ``api.EncoderAPI``'s. The model file's metadata (threshold, prior,
back-end) travels in the ONNX metadata entries "sslspeaker" and "sslspeaker_backend", so the
scores and decisions are the model file's. ``SpeakerEncoder.load`` hands ``.onnx`` files here.

Importing this module imports no torch (a test checks it).
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np

from ..errors import MissingExtraError
from ..fileio import file_sha256
from .api import EncoderAPI

METADATA_KEY, BACKEND_KEY = "sslspeaker", "sslspeaker_backend"
NOT_A_MODEL = "not an sslspeaker ONNX model"


def encode_arrays(arrays: dict) -> str:
    """Named numpy arrays as JSON text: name -> {"dtype", "shape", "data": base64 of the little-endian bytes}."""
    out = {}
    for k, v in arrays.items():
        a = np.ascontiguousarray(v)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        out[k] = {"dtype": a.dtype.str, "shape": list(a.shape), "data": base64.b64encode(a.tobytes()).decode("ascii")}
    return json.dumps(out, sort_keys=True)


def decode_arrays(text: str) -> dict[str, np.ndarray]:
    """The arrays ``encode_arrays`` wrote."""
    return {k: np.frombuffer(base64.b64decode(v["data"]), dtype=np.dtype(v["dtype"])).reshape(v["shape"]).copy()
            for k, v in json.loads(text).items()}


def _providers(ort, device: str) -> list[str]:
    """onnxruntime execution providers for ``device`` (auto: CUDA when onnxruntime has it, else CPU)."""
    available = ort.get_available_providers()
    if str(device) in ("auto", "cpu"):
        cuda = str(device) == "auto" and "CUDAExecutionProvider" in available
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise ValueError(f"device {device!r}: this onnxruntime has no CUDA provider (available: "
                             f"{', '.join(available)}); use --device cpu or auto")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"device {device!r}: not supported by the ONNX encoder (expected auto, cpu or cuda)")


def _read_metadata(path: Path, entries: dict) -> tuple[dict, object]:
    """(the model file's metadata, its ``BackendChain`` or None) from the ONNX metadata entries."""
    if METADATA_KEY not in entries:
        raise ValueError(f"{path}: {NOT_A_MODEL} (no '{METADATA_KEY}' metadata; export it with sslspeaker export)")
    try:
        meta = json.loads(entries[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: corrupt '{METADATA_KEY}' metadata ({exc})") from None
    if not isinstance(meta, dict) or meta.get("input") != "waveform" or "embed_dim" not in meta:
        raise ValueError(f"{path}: {NOT_A_MODEL} that takes a waveform (exported with --onnx-features-in, "
                         "or without a model file's metadata); export it again without --onnx-features-in")
    if meta.get("backend") is None:
        return meta, None
    from ..backends import BackendChain, BackendStateError

    try:
        return meta, BackendChain.from_state(meta["backend"], decode_arrays(entries.get(BACKEND_KEY, "{}")))
    except (BackendStateError, ValueError, KeyError) as exc:
        raise ValueError(f"{path}: metadata field 'backend': {exc}") from None


class OnnxSpeakerEncoder(EncoderAPI):
    """``SpeakerEncoder``'s API (embed, embed_batch, score, verify, enroll, threshold, ...) over onnxruntime.

    >>> model = OnnxSpeakerEncoder.load("model.onnx")
    >>> score, same = model.verify("a.wav", "b.wav")
    """

    def __init__(self, session, metadata: dict, source: str | os.PathLike | None = None, backend=None):
        self.session = session
        self.metadata = metadata
        self.source = str(source) if source is not None else None
        self.backend = backend
        self._input = session.get_inputs()[0].name
        self._fingerprint: str | None = None

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", threads: int | None = None) -> "OnnxSpeakerEncoder":
        """An ``.onnx`` file written by ``sslspeaker export --onnx``; ``threads``: onnxruntime's intra-op threads."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise MissingExtraError("an .onnx model needs onnxruntime: pip install 'sslspeaker[export]'") from None
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such model file")
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        providers = _providers(ort, str(device))
        try:
            session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:  # onnxruntime's own exception types (InvalidProtobuf, Fail, ...)
            raise ValueError(f"{path}: not a readable ONNX model ({' '.join(str(exc).split())[:160]})") from None
        meta, backend = _read_metadata(path, session.get_modelmeta().custom_metadata_map)
        return cls(session, meta, source=path, backend=backend)

    @property
    def device(self) -> str:
        return "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"

    def to(self, device: str) -> "OnnxSpeakerEncoder":
        """Only the device it was loaded for (load again for another); ``ValueError`` otherwise."""
        if str(device) not in ("auto", self.device):
            raise ValueError(f"device {device!r}: this ONNX encoder runs on {self.device}; load it with that device")
        return self

    @property
    def min_samples(self) -> int:
        """The shortest waveform the graph's front end takes: n_fft / 2 + 1 samples (reflect padding)."""
        return int(self.metadata["features"].get("n_fft", 512)) // 2 + 1

    @property
    def fingerprint(self) -> str:
        """sha256 of the ONNX file (its embeddings differ from the torch model's by float rounding)."""
        if self._fingerprint is None:
            self._fingerprint = "onnx-" + file_sha256(self.source)
        return self._fingerprint

    def embed_waves(self, waves) -> np.ndarray:
        """16-kHz waveforms -> normalised embeddings [B, D] (float32), as given (no speech trimming): a batch
        [B, T] of one length, or a sequence of 1-D waveforms of any lengths (embedded one by one)."""
        if isinstance(waves, (list, tuple)):
            return self._embed_prepared([np.asarray(w, dtype=np.float32).reshape(-1) for w in waves])
        x = np.ascontiguousarray(np.asarray(waves, dtype=np.float32))
        if x.ndim == 1:
            x = x[None]
        self._check_length(x.shape[-1])
        return np.asarray(self.session.run(None, {self._input: x})[0], dtype=np.float32)

    def __repr__(self) -> str:
        backend = self.backend.name if self.backend is not None else None
        return (f"OnnxSpeakerEncoder({self.metadata['encoder']['name']}, dim={self.metadata.get('embed_dim')}, "
                f"backend={backend}, threshold={self.threshold}, device={self.device}, source={self.source!r})")


__all__ = ["OnnxSpeakerEncoder", "encode_arrays", "decode_arrays", "METADATA_KEY", "BACKEND_KEY"]
