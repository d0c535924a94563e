"""The model file: one ``.safetensors`` file holding encoder weights plus JSON metadata.

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

``"features"`` is ``LogMel.describe()``. Reading one loads tensors and that JSON only: nothing
is ever unpickled. ``build_modules`` turns metadata and weights back into the encoder and its
front end.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import torch

from ..data.audio import SAMPLE_RATE
from ..features.mel import LogMel
from ..fileio import atomic_path
from ..models import build_encoder
from ..models.registry import get_encoder, list_encoders

FORMAT = "sslspeaker-model"
FORMAT_VERSION = 1
METADATA_KEY = "sslspeaker"
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


# ---- metadata ------------------------------------------------------------------------------
def pinned_options(name: str, options: dict) -> dict:
    """The encoder's constructor arguments with every default filled in (JSON types).

    A model file pins them all, so a later change of a default in the code cannot silently
    change what an old model computes. An unknown encoder keeps ``options`` as given (building
    it then names the known ones).
    """
    if name not in list_encoders():
        return dict(options)
    resolved = {}
    for pname, param in inspect.signature(get_encoder(name)).parameters.items():
        if pname == "n_mels" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is not inspect.Parameter.empty:
            resolved[pname] = param.default
    resolved.update(options)
    return json.loads(json.dumps(resolved))  # tuples -> lists, checks it is JSON-able


def model_metadata(encoder: str, options: dict, features: LogMel, provenance: dict) -> dict:
    """A model file's metadata, without its embedding size and decision threshold (both None)."""
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "encoder": {"name": encoder, "options": pinned_options(encoder, options)},
            "features": features.describe(), "embed_dim": None, "threshold": None, "threshold_source": None,
            "provenance": provenance}


def _build_encoder(meta: dict, state: dict[str, torch.Tensor], where: str) -> torch.nn.Module:
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
    return encoder


def _build_features(feat: dict, where: str) -> LogMel:
    if feat.get("type", "logmel") != "logmel":
        raise ModelError(f"{where}: unknown feature type {feat.get('type')!r}")
    if int(feat.get("sample_rate", SAMPLE_RATE)) != SAMPLE_RATE:
        raise ModelError(f"{where}: features at {feat.get('sample_rate')} Hz; this version works at {SAMPLE_RATE}")
    try:
        return LogMel.from_description(feat)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{where}: bad feature settings ({exc})") from None


def build_modules(meta: dict, state: dict[str, torch.Tensor], where: str) -> tuple[torch.nn.Module, LogMel]:
    """(encoder with ``state`` loaded, its ``LogMel``), both in eval mode; ``ModelError`` names ``where``."""
    encoder = _build_encoder(meta, state, where)
    features = _build_features(meta.get("features") or {}, where)
    return encoder.eval(), features.eval()


@torch.no_grad()
def embed_dim(encoder: torch.nn.Module, meta: dict) -> int:
    """The encoder's embedding size: its ``embed_dim``, else the width of one output."""
    dim = getattr(encoder, "embed_dim", None)
    if dim is None:  # an encoder without the attribute: ask it
        dim = encoder.eval()(torch.zeros(1, meta["features"]["n_mels"], 100)).shape[-1]
    return int(dim)


# ---- the safetensors file ------------------------------------------------------------------
def save_model(path: str | os.PathLike, state: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write tensors + metadata atomically (temporary file, then rename)."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return Path(path)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
            return {k: f.get_tensor(k) for k in f.keys()}, raw
    except Exception as exc:
        raise ModelError(f"{path}: not a readable safetensors file ({exc.__class__.__name__}: "
                         f"{str(exc).splitlines()[0][:160]})") from None


def _parse_metadata(path: Path, raw: str | None) -> dict:
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
    return meta


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a ``.safetensors`` model; no pickle involved."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    tensors, raw = _read_safetensors(path)
    return tensors, _parse_metadata(path, raw)


def set_threshold(model_path: str | os.PathLike, threshold: float | None, source: str | None) -> Path:
    """Rewrite a model file's decision threshold (and where it came from)."""
    tensors, meta = read_model_file(model_path)
    meta["threshold"] = None if threshold is None else float(threshold)
    meta["threshold_source"] = source if threshold is not None else None
    return save_model(model_path, tensors, meta)


def is_model_file(path: Path) -> bool:
    """A file named ``.safetensors``, or one that starts like one: an 8-byte header length, then '{'."""
    if not path.is_file():
        return False
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


__all__ = ["FORMAT", "FORMAT_VERSION", "METADATA_KEY", "NO_DEFAULT_MODEL", "ModelError", "NoDefaultModelError",
           "default_model_path", "resolve_model_path", "pinned_options", "model_metadata", "build_modules",
           "embed_dim", "save_model", "read_model_file", "set_threshold", "is_model_file"]
