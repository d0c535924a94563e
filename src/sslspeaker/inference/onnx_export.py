"""Export an encoder (plus, by default, its log-mel front end) to ONNX with dynamic batch and time.

    export_onnx("model.safetensors", "model.onnx")                 # waveform [B, T] -> embedding [B, D]
    export_onnx(encoder, "enc.onnx", include_features=False)       # features [B, n_mels, frames] -> [B, D]

Outputs are L2-normalised embeddings either way. ``torch.stft`` has no complex-valued ONNX
export, so the graph computes the STFT as a strided conv1d with a fixed DFT basis (the
Hamming window times cos and sin rows, stride = hop), after the same pre-emphasis and reflect
padding as ``LogMel``; the mel filterbank, log and normalisation follow as plain ops. The
waveform must be longer than n_fft / 2 samples (reflect padding), as for ``LogMel``.

Uses the current, torch.export-based exporter (``dynamo=True``, opset 18), which needs the
``onnxscript`` package; without it, the deprecated TorchScript exporter (``dynamo=False``,
opset 17), whose deprecation warning is shown (Python would hide a DeprecationWarning). Input
and output are named (``waveform`` or ``features``; ``embedding``), with a named dynamic batch
(``batch``) and time axis (``samples`` or ``frames``) and the output's fixed size [batch, D].

The model file's metadata (encoder, features, threshold, prior, back-end config) is stored as
the ONNX metadata entry "sslspeaker", plus the graph's input and what it computes; a
back-end's arrays go in the entry "sslspeaker_backend" (JSON: name -> dtype, shape and the
little-endian bytes in base64), so ``onnx_model.OnnxSpeakerEncoder`` scores as the model does.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..features.mel import LogMel
from .onnx_model import BACKEND_KEY, METADATA_KEY, encode_arrays

INPUT_WAVEFORM, INPUT_FEATURES, OUTPUT = "waveform", "features", "embedding"


class DFTLogMel(nn.Module):
    """``LogMel`` rewritten with exportable ops: the STFT is a conv1d with a windowed DFT basis."""

    def __init__(self, logmel: LogMel):
        super().__init__()
        n_fft, win = logmel.n_fft, logmel.win_length
        self.n_fft, self.hop = n_fft, logmel.hop_length
        self.pre_emphasis, self.norm = logmel.pre_emphasis, logmel.norm
        self.log_eps, self.norm_eps = logmel.log_eps, logmel.norm_eps
        # torch.stft centres the win-sample window in the n_fft frame; samples outside it weigh
        # zero, so the kernel spans only the window and the padded signal is trimmed to match.
        self.left = (n_fft - win) // 2
        self.right = n_fft - win - self.left
        n = torch.arange(win, dtype=torch.float64) + self.left
        k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)
        angle = 2 * math.pi * k[:, None] * n[None, :] / n_fft
        window = torch.hamming_window(win, dtype=torch.float64)
        basis = torch.cat([torch.cos(angle), torch.sin(angle)]) * window  # [2F, win]
        self.register_buffer("basis", basis.float().unsqueeze(1))  # [2F, 1, win]
        self.register_buffer("fb", logmel.fb.detach().float().clone())  # [F, n_mels]

    def forward(self, x: Tensor) -> Tensor:
        x = x.float()
        if self.pre_emphasis:
            x = torch.cat([x[:, :1], x[:, 1:] - self.pre_emphasis * x[:, :-1]], dim=1)
        x = F.pad(x.unsqueeze(1), (self.n_fft // 2, self.n_fft // 2), mode="reflect")
        x = x[:, :, self.left : -self.right] if self.right else x[:, :, self.left :]  # no shape arithmetic
        spec = F.conv1d(x, self.basis, stride=self.hop)  # [B, 2F, frames]: real rows, then imaginary
        re, im = spec.chunk(2, dim=1)
        power = re * re + im * im
        mel = torch.log(torch.matmul(power.transpose(1, 2), self.fb).transpose(1, 2) + self.log_eps)
        if self.norm in ("mean", "instance"):
            mean = mel.mean(dim=2, keepdim=True)
            mel = mel - mean
            if self.norm == "instance":
                mel = mel / torch.sqrt(mel.square().mean(dim=2, keepdim=True) + self.norm_eps)
        elif self.norm == "global":
            mel = mel - mel.mean(dim=(1, 2), keepdim=True)
            mel = mel / torch.sqrt(mel.square().mean(dim=(1, 2), keepdim=True) + self.norm_eps)
        return mel


class _Normalised(nn.Module):
    """[front end ->] encoder -> L2 normalisation, the graph that is exported."""

    def __init__(self, encoder: nn.Module, features: nn.Module | None):
        super().__init__()
        self.encoder, self.features = encoder, features

    def forward(self, x: Tensor) -> Tensor:
        if self.features is not None:
            x = self.features(x)
        return F.normalize(self.encoder(x).float(), dim=-1)


def _resolve(source, features: LogMel | None) -> tuple[nn.Module, LogMel, dict, dict]:
    """(encoder, LogMel, metadata, back-end arrays) from a model path, a ``SpeakerEncoder`` or a bare encoder."""
    from .model import SpeakerEncoder

    if isinstance(source, (str, os.PathLike)):
        source = SpeakerEncoder.load(source)
    if isinstance(source, SpeakerEncoder):
        arrays = source.backend.to_state()[1] if source.backend is not None else {}
        return source.encoder, features if features is not None else source.features, source.metadata, arrays
    if isinstance(source, nn.Module):
        # a bare encoder carries no feature settings: LogMel's defaults unless given
        return source, features if features is not None else LogMel(n_mels=source.n_mels), {}, {}
    raise TypeError(f"export_onnx: expected a model path, SpeakerEncoder or encoder module, got {type(source).__name__}")


def _dynamo_available() -> bool:
    try:
        import onnxscript  # noqa: F401  (the torch.export-based exporter's dependency)
    except ImportError:
        return False
    return True


def _export_graph(graph: nn.Module, example: Tensor, out_path: Path, name: str, axes: dict, opset: int | None) -> str:
    """Write the graph with the current exporter when it is installed, else the legacy one; which one ran."""
    if _dynamo_available():
        shapes = {"x": {i: torch.export.Dim(n, min=1 if i == 0 else axes["min"]) for i, n in axes.items() if i != "min"}}
        registration = logging.getLogger("torch.onnx._internal.exporter._registration")
        level = registration.level
        registration.setLevel(logging.ERROR)  # "torchvision is not installed": ops this graph never uses
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # torch-internal pytree deprecation
                torch.onnx.export(graph, (example,), str(out_path), dynamo=True, opset_version=opset or 18,
                                  input_names=[name], output_names=[OUTPUT], dynamic_shapes=shapes, verbose=False)
        finally:
            registration.setLevel(level)
        return "torch.export (dynamo=True)"
    with warnings.catch_warnings():
        warnings.simplefilter("default", DeprecationWarning)  # shown, not hidden by Python's default filters
        torch.onnx.export(graph, (example,), str(out_path), dynamo=False, opset_version=opset or 17,
                          input_names=[name], output_names=[OUTPUT],
                          dynamic_axes={name: {i: n for i, n in axes.items() if i != "min"}, OUTPUT: {0: "batch"}})
    return "TorchScript (dynamo=False; install onnxscript for the current exporter)"


def export_onnx(model_path_or_encoder, out_path: str | os.PathLike, include_features: bool = True, *,
                features: LogMel | None = None, opset: int | None = None) -> Path:
    """Write ``out_path`` (.onnx): waveform [B, T] (or features [B, n_mels, frames] when
    ``include_features=False``) -> L2-normalised embeddings [B, D], B and T dynamic.

    ``model_path_or_encoder``: a ``.safetensors`` model / run folder / checkpoint, a loaded
    ``SpeakerEncoder``, or an encoder module (then ``features`` or ``LogMel(n_mels)`` defaults).
    ``opset``: default 18 (current exporter) or 17 (legacy).
    """
    import onnx  # the "export" extra; fail early with ImportError when missing

    encoder, logmel, meta, arrays = _resolve(model_path_or_encoder, features)
    encoder = copy.deepcopy(encoder).cpu().eval()  # leave the caller's module (device, mode) untouched
    graph = _Normalised(encoder, DFTLogMel(logmel).cpu() if include_features else None).eval()
    n_mels = int(encoder.n_mels)
    g = torch.Generator().manual_seed(0)
    if include_features:  # batch 2 in the example: the exporter would fix a batch of 1 as a constant
        example = torch.randn(2, 32000, generator=g) * 0.1
        name, axes = INPUT_WAVEFORM, {0: "batch", 1: "samples", "min": logmel.n_fft // 2 + 1}
    else:
        example = torch.randn(2, n_mels, 201, generator=g)
        name, axes = INPUT_FEATURES, {0: "batch", 2: "frames", "min": 8}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    exporter = _export_graph(graph, example, out_path, name, axes, opset)
    model = onnx.load(str(out_path))
    info = {**meta, "input": name, "include_features": include_features, "normalised": True,
            "features_impl": "conv1d DFT basis" if include_features else None, "exporter": exporter}
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(info, sort_keys=True, default=str))
    if arrays:
        model.metadata_props.add(key=BACKEND_KEY, value=encode_arrays(arrays))
    onnx.save(model, str(out_path))
    return out_path


__all__ = ["DFTLogMel", "export_onnx"]
