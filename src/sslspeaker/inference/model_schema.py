"""The model metadata schema: types, bounds and consistency checked before any module is built.

A model file's JSON (or a checkpoint's derived metadata) is untrusted input. ``check_metadata``
accepts it only when every field has the documented type and lies within bounds that no real
model exceeds, so that building the encoder and front end can neither crash on a wrong type
nor attempt a huge allocation. Encoder options are checked against the encoder constructor's
own defaults (an int option takes an int in ``[0, MAX_SIZE]``, a list option a list of such
values, ...). Every error is a ``ModelError`` naming the file and the field.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from ..data.audio import SAMPLE_RATE
from ..features.mel import DESCRIPTION_DEFAULTS, NORMS
from ..models.registry import get_encoder, list_encoders

MAX_SIZE = 65536  # bound on every size-like integer (channels, embedding size, FFT length, ...)
MAX_N_FFT = 16384  # about 1 s at 16 kHz
MAX_N_MELS = 1024
TOP_LEVEL = {"format", "format_version", "encoder", "features", "embed_dim", "threshold", "threshold_source",
             "provenance", "backend", "prior"}


class MetadataError(ValueError):
    """One field of the metadata is wrong: ``field`` names it, the message says how."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"metadata field {field!r} {problem}")
        self.field = field


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def check_int(value: Any, field: str, low: int, high: int) -> int:
    if not _is_int(value) or not low <= value <= high:
        raise MetadataError(field, f"must be an integer in [{low}, {high}], got {value!r}")
    return value


def check_number(value: Any, field: str, low: float = -math.inf, high: float = math.inf) -> float:
    if not _is_number(value) or not low <= value <= high:
        raise MetadataError(field, f"must be a finite number in [{low}, {high}], got {value!r}")
    return float(value)


def check_mapping(value: Any, field: str) -> dict:
    if not isinstance(value, dict):
        raise MetadataError(field, f"must be a JSON object, got {type(value).__name__}")
    return value


def _check_like(value: Any, default: Any, field: str) -> None:
    """``value`` of the same JSON kind as the constructor default ``default``, within bounds."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise MetadataError(field, f"must be true or false, got {value!r}")
    elif _is_int(default):
        check_int(value, field, 0, MAX_SIZE)
    elif isinstance(default, float):
        check_number(value, field, -MAX_SIZE, MAX_SIZE)
    elif isinstance(default, str):
        if not isinstance(value, str) or len(value) > 64:
            raise MetadataError(field, f"must be a short string, got {value!r}")
    elif isinstance(default, (list, tuple)):
        if not isinstance(value, list) or not 0 < len(value) <= 64:
            raise MetadataError(field, f"must be a list of 1 to 64 values, got {value!r}")
        for i, item in enumerate(value):
            _check_like(item, default[0] if default else 0, f"{field}[{i}]")


def constructor_defaults(name: str) -> dict[str, Any]:
    """The encoder constructor's keyword defaults (``n_mels`` excluded: it comes from the features)."""
    params = inspect.signature(get_encoder(name)).parameters.items()
    return {k: p.default for k, p in params if k != "n_mels" and p.default is not inspect.Parameter.empty}


def check_encoder(encoder: Any) -> None:
    """{"name": a registered encoder, "options": {known option: value like its default}}."""
    check_mapping(encoder, "encoder")
    name, options = encoder.get("name"), encoder.get("options", {})
    if not isinstance(name, str) or name not in list_encoders():
        raise MetadataError("encoder.name", f"must be one of {', '.join(list_encoders())}, got {name!r}")
    defaults = constructor_defaults(name)
    for key, value in check_mapping(options, "encoder.options").items():
        if key not in defaults:
            raise MetadataError(f"encoder.options.{key}", f"is not an option of {name} "
                                                          f"(known: {', '.join(sorted(defaults))})")
        if defaults[key] is not None:
            _check_like(value, defaults[key], f"encoder.options.{key}")


def check_features(features: Any) -> None:
    """A ``LogMel.describe()`` dict with every size bounded and the frequencies ordered."""
    f = {**DESCRIPTION_DEFAULTS, **check_mapping(features, "features")}
    unknown = sorted(set(f) - set(DESCRIPTION_DEFAULTS))
    if unknown:
        raise MetadataError(f"features.{unknown[0]}", f"is not a feature setting (known: {', '.join(DESCRIPTION_DEFAULTS)})")
    if f["type"] != "logmel":
        raise MetadataError("features.type", f"must be 'logmel', got {f['type']!r}")
    if f["sample_rate"] != SAMPLE_RATE:
        raise MetadataError("features.sample_rate", f"must be {SAMPLE_RATE} (this version's rate), got {f['sample_rate']!r}")
    if f["norm"] not in NORMS:
        raise MetadataError("features.norm", f"must be one of {', '.join(map(str, NORMS))}, got {f['norm']!r}")
    check_int(f["n_mels"], "features.n_mels", 1, MAX_N_MELS)
    n_fft = check_int(f["n_fft"], "features.n_fft", 16, MAX_N_FFT)
    check_int(f["win_length"], "features.win_length", 1, n_fft)
    check_int(f["hop_length"], "features.hop_length", 1, n_fft)
    check_number(f["preemphasis"], "features.preemphasis", 0.0, 1.0)
    f_min = check_number(f["f_min"], "features.f_min", 0.0, SAMPLE_RATE / 2)
    check_number(f["f_max"], "features.f_max", f_min + 1e-9, SAMPLE_RATE / 2)


def check_decision(meta: dict) -> None:
    """threshold: null or finite; threshold_source: null or a string; prior: null or in (0, 1)."""
    if meta.get("threshold") is not None:
        check_number(meta["threshold"], "threshold")
    if meta.get("threshold_source") is not None and not isinstance(meta["threshold_source"], str):
        raise MetadataError("threshold_source", f"must be a string, got {meta['threshold_source']!r}")
    prior = meta.get("prior")
    if prior is not None and not (_is_number(prior) and 0.0 < prior < 1.0):
        raise MetadataError("prior", f"must be a number in (0, 1), got {prior!r}")


def check_metadata(meta: Any) -> dict:
    """``meta`` itself when it follows the schema; ``MetadataError`` naming the first bad field otherwise."""
    check_mapping(meta, "(top level)")
    unknown = sorted(set(meta) - TOP_LEVEL)
    if unknown:
        raise MetadataError(unknown[0], f"is not a model metadata field (known: {', '.join(sorted(TOP_LEVEL))})")
    check_encoder(meta.get("encoder"))
    check_features(meta.get("features"))
    if meta.get("embed_dim") is not None:
        check_int(meta["embed_dim"], "embed_dim", 1, MAX_SIZE)
    check_decision(meta)
    if meta.get("provenance") is not None:
        check_mapping(meta["provenance"], "provenance")
    if meta.get("backend") is not None:
        check_mapping(meta["backend"], "backend")
    return meta


__all__ = ["MAX_SIZE", "MAX_N_FFT", "MAX_N_MELS", "MetadataError", "check_metadata", "check_encoder",
           "check_features", "check_decision", "check_int", "check_number", "check_mapping", "constructor_defaults"]
