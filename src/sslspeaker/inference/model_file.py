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
     "backend": {...} (optional), "prior": 0.01 | null (optional),
     "provenance": {"checkpoint": "...", "step": 1234, "epoch": 10, "method": "moco",
                    "exported": "2025-...Z", "sslspeaker": "0.1.0", "train_config": {...}}}

``"features"`` is ``LogMel.describe()``. A file may also carry a fitted scoring back-end
(``sslspeaker.backends.BackendChain``): its config under ``"backend"`` and its arrays as tensors
named ``backend.<array>``; ``"threshold"`` then applies to the back-end's scores (log-likelihood
ratios when it is calibrated, ``"prior"`` being the target prior the threshold is the Bayes
threshold of). Such a file has format version 2, one without a back-end version 1.

Reading one loads tensors and that JSON only: nothing is ever unpickled; the JSON is checked
against the schema (``model_schema``) before anything is built. ``build_modules`` turns
metadata and weights back into the encoder and its front end, refusing weights that do not
fit the metadata or hold NaN/inf.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from ..features.mel import LogMel
from ..fileio import atomic_path
from ..models import build_encoder
from ..models.registry import list_encoders
from .model_schema import MetadataError, check_metadata, constructor_defaults

FORMAT = "sslspeaker-model"
FORMAT_VERSION = 2  # the newest version this code reads: 2 carries a back-end
PLAIN_FORMAT_VERSION = 1  # a file without a back-end
BACKEND_PREFIX = "backend."
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
    return json.loads(json.dumps({**constructor_defaults(name), **options}))  # tuples -> lists, JSON-able


def model_metadata(encoder: str, options: dict, features: LogMel, provenance: dict) -> dict:
    """A model file's metadata, without its embedding size and decision threshold (both None)."""
    return {"format": FORMAT, "format_version": PLAIN_FORMAT_VERSION,
            "encoder": {"name": encoder, "options": pinned_options(encoder, options)},
            "features": features.describe(), "embed_dim": None, "threshold": None, "threshold_source": None,
            "provenance": provenance}


def _encoder_arguments(meta: dict) -> tuple[str, dict]:
    enc = meta["encoder"]
    return enc["name"], {"n_mels": meta["features"].get("n_mels", 40), **(enc.get("options") or {})}


def _check_fit(meta: dict, state: dict[str, torch.Tensor], where: str) -> None:
    """The weights ``state`` have exactly the names and shapes the metadata's encoder has (built on the meta device)."""
    name, kwargs = _encoder_arguments(meta)
    try:
        with torch.device("meta"):  # shapes only: no memory is allocated
            expected = {k: tuple(v.shape) for k, v in build_encoder(name, **kwargs).state_dict().items()}
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{where}: metadata field 'encoder.options': cannot build encoder {name!r} ({exc})") from None
    got = {k: tuple(v.shape) for k, v in state.items()}
    if expected != got:
        bad = sorted(set(expected) ^ set(got)) or sorted(k for k in expected if expected[k] != got[k])
        shown = ", ".join(f"{k} {got.get(k, 'missing')} vs {expected.get(k, 'not expected')}" for k in bad[:3])
        raise ModelError(f"{where}: the weights do not fit the metadata field 'encoder' "
                         f"({name} with these options): {shown}")


def check_finite_weights(state: dict[str, torch.Tensor], where: str) -> None:
    """Every floating-point tensor of ``state`` finite; else ``ModelError`` naming the tensors."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise ModelError(f"{where}: {len(bad)} weight tensor(s) hold NaN or inf ({', '.join(bad[:3])}"
                         f"{', ...' if len(bad) > 3 else ''}): the model is broken")


def _build_encoder(meta: dict, state: dict[str, torch.Tensor], where: str) -> torch.nn.Module:
    _check_fit(meta, state, where)
    name, kwargs = _encoder_arguments(meta)
    encoder = build_encoder(name, **kwargs)
    encoder.load_state_dict(state, strict=True)
    return encoder


def _build_features(feat: dict, where: str) -> LogMel:
    try:
        return LogMel.from_description(feat)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{where}: bad feature settings ({exc})") from None


def checked_metadata(meta: dict, where: str) -> dict:
    """``meta`` when it follows the schema (``model_schema``); ``ModelError`` naming ``where`` and the field."""
    try:
        return check_metadata(meta)
    except MetadataError as exc:
        raise ModelError(f"{where}: {exc}") from None


def build_modules(meta: dict, state: dict[str, torch.Tensor], where: str) -> tuple[torch.nn.Module, LogMel]:
    """(encoder with ``state`` loaded, its ``LogMel``), both in eval mode; ``ModelError`` names ``where``.

    The metadata is checked against the schema and the weights against the metadata (names,
    shapes, finite values) before anything is built.
    """
    checked_metadata(meta, where)
    check_finite_weights(state, where)
    features = _build_features(meta["features"], where)
    encoder = _build_encoder(meta, state, where)
    dim = embed_dim(encoder, meta)
    if meta.get("embed_dim") is not None and meta["embed_dim"] != dim:
        raise ModelError(f"{where}: metadata field 'embed_dim' is {meta['embed_dim']} but the encoder's "
                         f"weights give {dim}-dimensional embeddings")
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
    """Write tensors + metadata atomically (temporary file, then rename); the metadata is checked first."""
    from safetensors.torch import save_file

    checked_metadata(metadata, str(path))

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
    except RecursionError:
        raise ModelError(f"{path}: corrupt sslspeaker metadata (JSON nested too deeply)") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{path}: corrupt sslspeaker metadata (a JSON {type(meta).__name__}, not an object)")
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path}: not an sslspeaker model (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelError(f"{path}: metadata field 'format_version' must be a positive integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise ModelError(f"{path}: model format version {version} is newer than this "
                         f"sslspeaker supports ({FORMAT_VERSION}); upgrade sslspeaker")
    return checked_metadata(meta, str(path))


def read_model_file(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, metadata) of a ``.safetensors`` model; no pickle involved."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    tensors, raw = _read_safetensors(path)
    return tensors, _parse_metadata(path, raw)


DEFAULT_PRIOR = 0.01  # the target prior of a calibrated model's default decision when none is stated


def read_backend(meta: dict, arrays: dict, where: str, dim: int):
    """The model file's ``BackendChain`` (None when it has none), checked against the embedding size ``dim``."""
    from ..backends import BackendChain, BackendStateError

    if meta.get("backend") is None:
        if arrays:
            raise ModelError(f"{where}: tensors {', '.join(sorted(arrays)[:3])} under '{BACKEND_PREFIX}' "
                             "but no metadata field 'backend'")
        if meta.get("prior") is not None:
            raise ModelError(f"{where}: metadata field 'prior' is set but the model has no back-end")
        return None
    try:
        chain = BackendChain.from_state(meta["backend"], arrays)
    except BackendStateError as exc:
        raise ModelError(f"{where}: metadata field 'backend': {exc}") from None
    if meta["backend"]["input_dim"] != dim:
        raise ModelError(f"{where}: metadata field 'backend.input_dim' is {meta['backend']['input_dim']} "
                         f"but the encoder gives {dim}-dimensional embeddings")
    if meta.get("prior") is not None and not chain.calibrated:
        raise ModelError(f"{where}: metadata field 'prior' is set but the back-end is not calibrated")
    return chain


def split_backend(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict]:
    """(encoder weights, back-end arrays as float64 numpy without the ``backend.`` prefix) of a model file."""
    encoder = {k: v for k, v in tensors.items() if not k.startswith(BACKEND_PREFIX)}
    arrays = {k[len(BACKEND_PREFIX):]: v.double().numpy() for k, v in tensors.items() if k.startswith(BACKEND_PREFIX)}
    return encoder, arrays


def backend_tensors(arrays: dict) -> dict[str, torch.Tensor]:
    """A back-end's named arrays as float64 tensors under the ``backend.`` prefix."""
    import numpy as np

    return {BACKEND_PREFIX + k: torch.from_numpy(np.array(v, dtype=np.float64)) for k, v in arrays.items()}


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


__all__ = ["FORMAT", "FORMAT_VERSION", "PLAIN_FORMAT_VERSION", "BACKEND_PREFIX", "METADATA_KEY", "NO_DEFAULT_MODEL", "ModelError", "NoDefaultModelError",
           "default_model_path", "resolve_model_path", "pinned_options", "model_metadata", "build_modules",
           "embed_dim", "save_model", "read_model_file", "set_threshold", "is_model_file", "checked_metadata",
           "check_finite_weights", "split_backend", "backend_tensors", "read_backend", "DEFAULT_PRIOR"]
