"""The inference model: one ``.safetensors`` file holding encoder weights plus JSON metadata.

A model file is all a user needs. Its safetensors header carries one string entry,
``"sslspeaker"``: a JSON object ::

    {"format": "sslspeaker-model", "format_version": 1,
     "encoder": {"name": "fast_resnet34", "options": {...}},
     "features": {"type": "logmel", "sample_rate": 16000, "n_mels": 40, "norm": "instance",
                  "preemphasis": 0.97, "n_fft": 512, "win_length": 400, "hop_length": 160,
                  "f_min": 20.0, "f_max": 7600.0},
     "embed_dim": 256,
     "threshold": 0.53 | null, "threshold_source": "dev EER threshold on ..." | null,
     "provenance": {"checkpoint": "...", "step": 1234, "epoch": 10, "method": "moco",
                    "exported": "2025-...Z", "sslspeaker": "0.1.0", "train_config": {...}}}

Loading reads tensors and that JSON only: nothing is ever unpickled. ``SpeakerEncoder.load``
also accepts a training run folder or a ``.pt`` checkpoint (loaded with
``torch.load(weights_only=True)``) for convenience.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.audio import SAMPLE_RATE, read_audio

FORMAT = "sslspeaker-model"
FORMAT_VERSION = 1
METADATA_KEY = "sslspeaker"
CHECKPOINT_IN_RUN = Path("checkpoints") / "last.pt"
NO_DEFAULT_MODEL = ("no default model is bundled in this install; pass --model PATH "
                    "(a .safetensors model or a training run folder)")


class ModelError(ValueError):
    """A model file/checkpoint that cannot be used; the message names it and the reason."""


class NoDefaultModelError(FileNotFoundError):
    def __init__(self) -> None:
        super().__init__(NO_DEFAULT_MODEL)


def default_model_path() -> Path:
    """``sslspeaker/pretrained/default.safetensors`` inside the installed package (may not exist)."""
    return Path(__file__).resolve().parent.parent / "pretrained" / "default.safetensors"


def resolve_model_path(path: str | os.PathLike | None) -> Path:
    """``path`` as given, or the bundled default; ``NoDefaultModelError`` when neither exists."""
    if path is not None:
        return Path(path)
    p = default_model_path()
    if not p.is_file():
        raise NoDefaultModelError()
    return p


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ---- building from a training checkpoint ---------------------------------------------------
def checkpoint_path(src: str | os.PathLike) -> Path:
    """A run folder -> its ``checkpoints/last.pt``; a file -> itself."""
    src = Path(src)
    if src.is_dir():
        ckpt = src / CHECKPOINT_IN_RUN
        if not ckpt.is_file():
            raise ModelError(f"{src}: a folder but not a training run (no {CHECKPOINT_IN_RUN})")
        return ckpt
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such model, checkpoint or run folder")
    return src


def _features_metadata(cfg) -> dict:
    from ..training.build import build_features

    feats = build_features(cfg)
    n_mels, n_fft, sample_rate, f_min, f_max = feats._fb_args
    return {"type": "logmel", "sample_rate": int(sample_rate), "n_mels": int(n_mels), "norm": feats.norm,
            "preemphasis": float(feats.pre_emphasis or 0.0), "n_fft": int(n_fft),
            "win_length": int(feats.win_length), "hop_length": int(feats.hop_length),
            "f_min": float(f_min), "f_max": float(f_max)}


def _resolved_options(name: str, options: dict) -> dict:
    """The encoder's constructor arguments with every default filled in (JSON types).

    A model file pins them all, so a later change of a default in the code cannot silently
    change what an old model computes.
    """
    import inspect

    from ..models import registry

    factory = registry._ENCODERS.get(name)
    if factory is None:
        return dict(options)
    resolved = {}
    for pname, param in inspect.signature(factory).parameters.items():
        if pname == "n_mels" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is not inspect.Parameter.empty:
            resolved[pname] = param.default
    resolved.update(options)
    return json.loads(json.dumps(resolved))  # tuples -> lists, checks it is JSON-able


def _from_checkpoint(src: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """(encoder state_dict, metadata without threshold, checkpoint path) of a training checkpoint."""
    from ..config import ConfigError, config_from_dict
    from ..training.checkpoint import load_checkpoint

    ckpt_path = checkpoint_path(src)
    ckpt = load_checkpoint(ckpt_path)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "method" not in ckpt:
        raise ModelError(f"{ckpt_path}: not an sslspeaker training checkpoint (needs 'config' and 'method')")
    try:
        cfg = config_from_dict(ckpt["config"])
    except ConfigError as exc:
        raise ModelError(f"{ckpt_path}: bad config in checkpoint ({exc})") from None
    state = {k[len("encoder."):]: v for k, v in ckpt["method"].items() if k.startswith("encoder.")}
    if not state:
        raise ModelError(f"{ckpt_path}: the checkpoint holds no encoder weights (no 'encoder.*' keys)")
    position = ckpt.get("position") or {}
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "encoder": {"name": cfg.model.encoder, "options": _resolved_options(cfg.model.encoder, cfg.model.options)},
        "features": _features_metadata(cfg),
        "embed_dim": None,  # filled in from the built encoder
        "threshold": None,
        "threshold_source": None,
        "provenance": {
            "checkpoint": str(ckpt_path.resolve()),
            "step": position.get("step"),
            "epoch": position.get("epoch"),
            "method": cfg.method.name,
            "train_config": ckpt["config"],
        },
    }
    return state, meta, ckpt_path


def _build_modules(meta: dict, state: dict[str, torch.Tensor], where: str):
    from ..features.mel import LogMel
    from ..models import build_encoder

    enc, feat = meta.get("encoder") or {}, meta.get("features") or {}
    try:
        encoder = build_encoder(enc["name"], n_mels=feat["n_mels"], **(enc.get("options") or {}))
    except KeyError as exc:
        raise ModelError(f"{where}: metadata lacks {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{where}: cannot build encoder {enc.get('name')!r} ({exc})") from None
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{where}: weights do not fit encoder {enc['name']!r} "
                         f"({str(exc).splitlines()[0][:200]})") from None
    if feat.get("type", "logmel") != "logmel":
        raise ModelError(f"{where}: unknown feature type {feat.get('type')!r}")
    if int(feat.get("sample_rate", SAMPLE_RATE)) != SAMPLE_RATE:
        raise ModelError(f"{where}: features at {feat.get('sample_rate')} Hz; this version works at {SAMPLE_RATE}")
    kwargs = {k: feat[k] for k in ("n_fft", "win_length", "hop_length", "f_min", "f_max") if k in feat}
    features = LogMel(n_mels=feat["n_mels"], norm=feat.get("norm", "instance"),
                      pre_emphasis=feat.get("preemphasis", 0.97), **kwargs)
    encoder.eval()
    features.eval()
    return encoder, features


@torch.no_grad()
def _embed_dim(encoder: torch.nn.Module, meta: dict) -> int:
    dim = getattr(encoder, "embed_dim", None)
    if dim is None:  # an encoder without the attribute: ask it
        dim = encoder.eval()(torch.zeros(1, meta["features"]["n_mels"], 100)).shape[-1]
    return int(dim)


# ---- the safetensors file --------------------------------------------------------------------
def save_model(path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write tensors + metadata atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    os.replace(tmp, path)
    return path


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a ``.safetensors`` model; no pickle involved."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0][:160]})") from None
    if raw is None:
        raise ModelError(f"{path}: not an sslspeaker model (no '{METADATA_KEY}' metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: corrupt sslspeaker metadata ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path}: not an sslspeaker model (format {meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelError(f"{path}: model format version {meta['format_version']} is newer than this "
                         f"sslspeaker supports ({FORMAT_VERSION}); upgrade sslspeaker")
    return tensors, meta


def export_model(checkpoint_or_run_dir: str | os.PathLike, out_path: str | os.PathLike,
                 threshold: float | None = None, threshold_source: str | None = None) -> Path:
    """Training run folder or ``.pt`` checkpoint -> a self-contained ``.safetensors`` model."""
    from .. import __version__

    state, meta, _ = _from_checkpoint(checkpoint_or_run_dir)
    encoder, _ = _build_modules(meta, state, str(checkpoint_or_run_dir))  # checks the weights fit
    meta["embed_dim"] = _embed_dim(encoder, meta)
    if threshold is not None:
        meta["threshold"] = float(threshold)
        meta["threshold_source"] = threshold_source or "given at export"
    meta["provenance"].update(exported=_now(), sslspeaker=__version__)
    return save_model(out_path, encoder.state_dict(), meta)


def set_threshold(model_path: str | os.PathLike, threshold: float | None, source: str | None) -> Path:
    """Rewrite a model file's decision threshold (and where it came from)."""
    tensors, meta = read_model_file(model_path)
    meta["threshold"] = None if threshold is None else float(threshold)
    meta["threshold_source"] = source if threshold is not None else None
    return save_model(model_path, tensors, meta)


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with an 8-byte header length, then the JSON header ('{')."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


# ---- the user-facing model ------------------------------------------------------------------
class SpeakerEncoder:
    """Waveforms or audio files -> L2-normalised speaker embeddings; cosine scoring and decisions.

    >>> model = SpeakerEncoder.load("model.safetensors")
    >>> score, same = model.verify("a.wav", "b.wav")
    """

    def __init__(self, encoder: torch.nn.Module, features: torch.nn.Module, metadata: dict,
                 source: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
        self.encoder = encoder.eval()
        self.features = features.eval()
        self.metadata = metadata
        self.source = str(source) if source is not None else None  # the file the weights came from
        self._fingerprint: str | None = None
        self.device = torch.device("cpu")
        self.to(device)

    # ---- loading ----
    @classmethod
    def load(cls, path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> "SpeakerEncoder":
        """A ``.safetensors`` model, a run folder or a ``.pt`` checkpoint; None = the bundled default."""
        path = resolve_model_path(path)
        if path.is_file() and (path.suffix == ".safetensors" or _looks_like_safetensors(path)):
            state, meta = read_model_file(path)
            source = path
        else:
            state, meta, source = _from_checkpoint(path)
        encoder, features = _build_modules(meta, state, str(path))
        if meta.get("embed_dim") is None:
            meta["embed_dim"] = _embed_dim(encoder, meta)
        return cls(encoder, features, meta, source=source, device=device)

    def to(self, device: str | torch.device) -> "SpeakerEncoder":
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.encoder.to(self.device)
        self.features.to(self.device)
        return self

    # ---- properties ----
    @property
    def threshold(self) -> float | None:
        t = self.metadata.get("threshold")
        return None if t is None else float(t)

    @property
    def threshold_source(self) -> str | None:
        return self.metadata.get("threshold_source")

    @property
    def embed_dim(self) -> int:
        return int(self.metadata["embed_dim"])

    @property
    def config(self) -> dict:
        """The resolved model and feature configuration (what the embeddings depend on)."""
        m = self.metadata
        return {"encoder": m["encoder"]["name"], "options": dict(m["encoder"].get("options") or {}),
                "features": dict(m["features"]), "embed_dim": m.get("embed_dim"), "sample_rate": SAMPLE_RATE}

    @property
    def fingerprint(self) -> str:
        """sha256 over the weights and the embedding-relevant metadata (not the threshold).

        Two models with this same fingerprint give the same embeddings; caches key on it.
        """
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(json.dumps({k: self.metadata.get(k) for k in ("encoder", "features")}, sort_keys=True).encode())
            for name, t in sorted(self.encoder.state_dict().items()):
                t = t.detach().cpu().contiguous()
                h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    # ---- embedding ----
    def _waveform(self, x: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        if isinstance(x, (str, os.PathLike)):
            return read_audio(x)
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.asarray(x, dtype=np.float32)
        if x.ndim == 2 and 1 in x.shape:
            x = x.reshape(-1)
        if x.ndim != 1:
            raise ValueError(f"expected a 1-D (mono) waveform, got shape {x.shape}")
        if sample_rate != SAMPLE_RATE:
            import soxr

            x = soxr.resample(x, sample_rate, SAMPLE_RATE).astype(np.float32, copy=False)
        return x

    @torch.inference_mode()
    def embed_waves(self, waves: np.ndarray | torch.Tensor) -> np.ndarray:
        """A batch of equal-length 16-kHz waveforms [B, T] -> normalised embeddings [B, D] (float32)."""
        x = torch.as_tensor(np.asarray(waves, dtype=np.float32) if not isinstance(waves, torch.Tensor) else waves,
                            dtype=torch.float32).to(self.device)
        if x.dim() == 1:
            x = x[None]
        min_len = self.features.n_fft // 2 + 1
        if x.shape[-1] < min_len:
            raise ValueError(f"audio too short: {x.shape[-1]} samples; needs at least {min_len} "
                             f"({1000 * min_len / SAMPLE_RATE:.0f} ms at {SAMPLE_RATE} Hz)")
        return F.normalize(self.encoder(self.features(x)).float(), dim=-1).cpu().numpy()

    def embed(self, waveform_or_path: Any, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Embedding [D] (float32, L2 norm 1) of one utterance: a path, or a 1-D waveform at ``sample_rate``."""
        return self.embed_waves(self._waveform(waveform_or_path, sample_rate)[None])[0]

    def embed_batch(self, items: Sequence[Any], sample_rate: int = SAMPLE_RATE) -> np.ndarray:
        """Embeddings [N, D] of several utterances (each embedded at its own full length)."""
        if len(items) == 0:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.stack([self.embed(x, sample_rate) for x in items])

    # ---- scoring ----
    @staticmethod
    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))

    def score(self, a: Any, b: Any, sample_rate: int = SAMPLE_RATE) -> float:
        """Cosine similarity of two utterances' full-length embeddings."""
        return self.cosine(self.embed(a, sample_rate), self.embed(b, sample_rate))

    def verify(self, a: Any, b: Any, threshold: float | None = None,
               sample_rate: int = SAMPLE_RATE) -> tuple[float, bool]:
        """(score, same speaker?) — same when score >= threshold (given, else the model's)."""
        if threshold is None:
            threshold = self.threshold
        if threshold is None:
            raise ValueError(f"{self.source or 'this model'} stores no decision threshold: pass threshold=... "
                             "(or export the model with --trials to store its dev EER threshold)")
        s = self.score(a, b, sample_rate)
        return s, bool(s >= threshold)

    def __repr__(self) -> str:
        return (f"SpeakerEncoder({self.metadata['encoder']['name']}, dim={self.metadata.get('embed_dim')}, "
                f"threshold={self.threshold}, device={self.device}, source={self.source!r})")


def load_model(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> SpeakerEncoder:
    return SpeakerEncoder.load(path, device)


__all__ = ["SpeakerEncoder", "export_model", "load_model", "default_model_path", "resolve_model_path",
           "set_threshold", "read_model_file", "save_model", "file_sha256", "ModelError",
           "NoDefaultModelError", "NO_DEFAULT_MODEL"]
