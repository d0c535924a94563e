"""Export an encoder (plus, by default, its log-mel front end) to ONNX with dynamic batch and time.

    export_onnx("model.safetensors", "model.onnx")                 # waveform [B, T] -> embedding [B, D]
    export_onnx(encoder, "enc.onnx", include_features=False)       # features [B, n_mels, frames] -> [B, D]

Outputs are L2-normalised embeddings either way. ``torch.stft`` has no complex-valued ONNX
export, so the graph computes the STFT as a strided conv1d with a fixed DFT basis (the
Hamming window times cos and sin rows, stride = hop), after the same pre-emphasis and reflect
padding as ``LogMel``; the mel filterbank, log and normalisation follow as plain ops. The
waveform must be longer than n_fft / 2 samples (reflect padding), as for ``LogMel``.

Uses the TorchScript-based exporter (``dynamo=False``), which needs only the ``onnx``
package; the torch.export-based one would also need ``onnxscript``. The model's sslspeaker
metadata (encoder, features, threshold) is stored as the ONNX metadata entry "sslspeaker".
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..features.mel import LogMel

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


def _resolve(source, features: LogMel | None) -> tuple[nn.Module, LogMel, dict]:
    """(encoder, LogMel, metadata) from a model path, a ``SpeakerEncoder`` or a bare encoder."""
    from .model import SpeakerEncoder

    if isinstance(source, (str, os.PathLike)):
        source = SpeakerEncoder.load(source)
    if isinstance(source, SpeakerEncoder):
        return source.encoder, features if features is not None else source.features, source.metadata
    if isinstance(source, nn.Module):
        # a bare encoder carries no feature settings: LogMel's defaults unless given
        return source, features if features is not None else LogMel(n_mels=source.n_mels), {}
    raise TypeError(f"export_onnx: expected a model path, SpeakerEncoder or encoder module, got {type(source).__name__}")


def export_onnx(model_path_or_encoder, out_path: str | os.PathLike, include_features: bool = True, *,
                features: LogMel | None = None, opset: int = 17) -> Path:
    """Write ``out_path`` (.onnx): waveform [B, T] (or features [B, n_mels, frames] when
    ``include_features=False``) -> L2-normalised embeddings [B, D], B and T dynamic.

    ``model_path_or_encoder``: a ``.safetensors`` model / run folder / checkpoint, a loaded
    ``SpeakerEncoder``, or an encoder module (then ``features`` or ``LogMel(n_mels)`` defaults).
    """
    import onnx  # the "export" extra; fail early with ImportError when missing

    encoder, logmel, meta = _resolve(model_path_or_encoder, features)
    encoder = copy.deepcopy(encoder).cpu().eval()  # leave the caller's module (device, mode) untouched
    graph = _Normalised(encoder, DFTLogMel(logmel).cpu() if include_features else None).eval()
    n_mels = int(encoder.n_mels)
    if include_features:
        example = torch.randn(1, 32000, generator=torch.Generator().manual_seed(0)) * 0.1
        name, axes = INPUT_WAVEFORM, {0: "batch", 1: "samples"}
    else:
        example = torch.randn(1, n_mels, 201, generator=torch.Generator().manual_seed(0))
        name, axes = INPUT_FEATURES, {0: "batch", 2: "frames"}
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(graph, (example,), str(out_path), dynamo=False, opset_version=opset,
                          input_names=[name], output_names=[OUTPUT],
                          dynamic_axes={name: axes, OUTPUT: {0: "batch"}})
    model = onnx.load(str(out_path))
    info = {"input": name, "include_features": include_features, "normalised": True,
            "features_impl": "conv1d DFT basis" if include_features else None, **meta}
    model.metadata_props.add(key="sslspeaker", value=json.dumps(info, sort_keys=True, default=str))
    onnx.save(model, str(out_path))
    return out_path


__all__ = ["DFTLogMel", "export_onnx"]
