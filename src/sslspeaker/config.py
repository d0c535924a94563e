"""Typed, strict configuration: a YAML recipe plus ``key=value`` overrides.

Every section is a dataclass; an unknown key anywhere is an error naming it and the keys
that exist; values are checked against the field types. ``${VAR}`` in strings expands from
the environment, with ``SSLSPEAKER_DATA`` defaulting to the shared data folder.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .fileio import atomic_write_text
from .paths import ENV_VAR, data_root


class ConfigError(ValueError):
    pass


class _Loader(yaml.SafeLoader):
    """YAML as people write it: ``1e-3`` and ``1.0e30`` are numbers (YAML 1.1 alone reads them as strings)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    """Parse YAML safely (no tags that build objects), reading every common float spelling as a float."""
    return yaml.load(text, Loader=_Loader)


def require(where: str, value: Any, ok: bool, expected: str) -> None:
    """Raise ``ConfigError`` naming the option ``where`` and its value unless ``ok``."""
    if not ok:
        raise ConfigError(f"{where}={value!r}: expected {expected}")


def require_bounds(section: str, obj: Any, bounds: dict[str, tuple[Any, str]]) -> None:
    """Each ``name: (test, expected)`` of ``bounds`` holds for the field ``obj.name`` (else ``ConfigError``)."""
    for name, (test, expected) in bounds.items():
        value = getattr(obj, name)
        require(f"{section}.{name}", value, bool(test(value)), expected)


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _probability(v) -> bool:
    return 0.0 <= v <= 1.0


POSITIVE, NON_NEGATIVE, PROBABILITY = (_positive, "> 0"), (_non_negative, ">= 0"), (_probability, "in [0, 1]")
DEVICES = re.compile(r"auto|cpu|cuda(:[0-9]+)?|mps")


@dataclass
class ManifestRef:
    """A manifest, and optionally the folder its relative paths are relative to."""

    manifest: str = ""  # a manifest CSV, or a folder of audio files
    root: str | None = None
    category: str | None = None  # noise sets: noise | music | speech


@dataclass
class DataConfig:
    train: list[ManifestRef] = field(default_factory=list)
    crop_seconds: float = 1.8
    n_views: int = 2
    local_crop_seconds: float = 0.0  # multi-crop methods (DINO): length of the local views
    n_local_views: int = 0
    labelled_fraction: float = 1.0  # methods that read labels: share of speakers whose labels are kept
    workers: int = 1  # DataLoader worker processes (0 = read in the training process)
    prefetch: int = 4
    cache_gb: float = 2.0  # keep decoded training audio in memory when the whole set fits (0 = off)
    # files: data.train lists manifests or folders, crops read at random; shards: shard folders made by
    # `sslspeaker shard`, read in sequence (data/shards.py) through a shuffle buffer of shuffle_buffer
    # utterances, in data.streams streams per rank (data.workers must divide it)
    format: str = "files"
    shuffle_buffer: int = 500
    streams: int = 4

    def __post_init__(self) -> None:
        require_bounds("data", self, {
            "crop_seconds": POSITIVE, "n_views": (lambda v: v >= 1, ">= 1"), "local_crop_seconds": NON_NEGATIVE,
            "n_local_views": NON_NEGATIVE, "labelled_fraction": PROBABILITY, "workers": NON_NEGATIVE,
            "prefetch": (lambda v: v >= 1, ">= 1"), "cache_gb": NON_NEGATIVE,
            "shuffle_buffer": NON_NEGATIVE, "streams": (lambda v: v >= 1, ">= 1")})
        require("data.format", self.format, self.format in ("files", "shards"), "files or shards")
        if self.format == "shards":
            require("data.workers", self.workers, self.streams % max(1, self.workers) == 0,
                    f"a divisor of data.streams={self.streams} with data.format=shards")
        if self.n_local_views:
            require("data.local_crop_seconds", self.local_crop_seconds, self.local_crop_seconds > 0,
                    "> 0 with data.n_local_views > 0")


NOISE_CATEGORIES = ("noise", "music", "babble")  # babble is made of speech files


@dataclass
class AugmentConfig:
    """Augmentation of the training views: the recipe's ``augment:`` section, read by ``augment.Augmenter``.

    SNR ranges in dB and babble talker counts (inclusive) are [low, high], drawn uniformly, as in
    the MUSAN recipes.
    """

    mode: str = "none"  # none | noise | reverb | N|R   (MoCoVox Table 1)
    apply_to: str = "both"  # both | one | second
    noise: list[ManifestRef] = field(default_factory=list)
    rir: list[ManifestRef] = field(default_factory=list)
    on_device: bool = False  # batched on the training device instead of in data workers
    bandlimit: float = 0.0  # probability that a view is also low-passed to a telephone band (any mode)
    bandlimit_hz: tuple[float, float] = (3400.0, 4000.0)  # its cutoff, drawn uniformly (8-kHz telephone: 3.4 kHz)
    eq: float = 0.0  # probability that a view is also coloured by a random smooth equaliser (any mode)
    eq_db: float = 3.0  # std in dB of each of the equaliser's 3 cosine components over log frequency
    noise_snr: tuple[float, float] = (0.0, 15.0)
    music_snr: tuple[float, float] = (5.0, 15.0)
    babble_snr: tuple[float, float] = (13.0, 20.0)
    babble_count: tuple[int, int] = (3, 7)
    p_noise_given_NR: float = 0.75  # mode "N|R": noise with this probability, else reverb
    category_weights: dict[str, float] = field(default_factory=lambda: dict.fromkeys(NOISE_CATEGORIES, 1.0))

    def __post_init__(self) -> None:
        for name in ("noise_snr", "music_snr", "babble_snr", "babble_count", "bandlimit_hz"):
            self._check_range(name)
        if self.babble_count[0] < 1:
            raise ConfigError(f"augment.babble_count must be >= 1, got {self.babble_count}")
        for name in ("p_noise_given_NR", "bandlimit", "eq"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.eq_db < 0:
            raise ConfigError(f"augment.eq_db must be >= 0, got {self.eq_db}")
        from .data.audio import SAMPLE_RATE

        if not 0.0 < self.bandlimit_hz[0] <= self.bandlimit_hz[1] <= SAMPLE_RATE / 2:
            raise ConfigError(f"augment.bandlimit_hz must lie in (0, {SAMPLE_RATE // 2}] Hz, got {self.bandlimit_hz}")
        unknown = set(self.category_weights) - set(NOISE_CATEGORIES)
        if unknown or any(w < 0 for w in self.category_weights.values()):
            raise ConfigError(f"augment.category_weights: categories are {list(NOISE_CATEGORIES)}, weights >= 0; "
                              f"got {self.category_weights}")

    def _check_range(self, name: str) -> None:
        """``name`` is a [low, high] pair with low <= high; stored as a tuple (YAML gives lists)."""
        value = getattr(self, name)
        if len(value) != 2:
            raise ConfigError(f"augment.{name} must be [low, high], got {value}")
        lo, hi = value
        if lo > hi:
            raise ConfigError(f"augment.{name}: low {lo} > high {hi}")
        setattr(self, name, (lo, hi))

    def snr_range(self, category: str) -> tuple[float, float]:
        return getattr(self, f"{category}_snr")


@dataclass
class FeatureConfig:
    n_mels: int = 40
    norm: str = "instance"  # none | mean | instance | global
    preemphasis: float = 0.97

    def __post_init__(self) -> None:
        require_bounds("features", self, {"n_mels": (lambda v: v >= 1, ">= 1"),
                                          "preemphasis": ((lambda v: 0.0 <= v < 1.0), "in [0, 1)")})


@dataclass
class ModelConfig:
    encoder: str = "fast_resnet34"
    options: dict = field(default_factory=dict)


@dataclass
class MethodConfig:
    name: str = "moco"
    options: dict = field(default_factory=dict)


@dataclass
class OptimConfig:
    name: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine | constant
    warmup_steps: int = 0
    warmup_fraction: float = 0.0  # warm-up as a fraction of the planned steps (follows fit_to_budget re-plans)
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    decay_all: bool = False  # weight decay on every parameter; default: not on biases, norms, scalars

    def __post_init__(self) -> None:
        require_bounds("optim", self, {
            "lr": POSITIVE, "momentum": ((lambda v: 0.0 <= v < 1.0), "in [0, 1)"), "weight_decay": NON_NEGATIVE,
            "warmup_steps": NON_NEGATIVE, "warmup_fraction": ((lambda v: 0.0 <= v < 1.0), "in [0, 1)"),
            "grad_clip": NON_NEGATIVE})


@dataclass
class ValidationConfig:
    trials: str | None = None
    audio_root: str | None = None
    every_epochs: int = 1
    max_seconds: float = 0.0  # crop evaluation utterances to this length (0 = full)

    def __post_init__(self) -> None:
        require_bounds("validation", self, {"every_epochs": NON_NEGATIVE, "max_seconds": NON_NEGATIVE})


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64  # per process
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 | fp16
    channels_last: bool = False
    compile: bool = False
    threads: int = 0  # torch intra-op threads (0 = torch default)
    checkpoint_every: int = 500  # steps
    log_every: int = 10  # steps
    max_nonfinite: int = 5  # consecutive non-finite losses before the run stops
    init_from: str | None = None  # start the encoder from another run's checkpoint
    # With a time budget (--max-minutes): re-plan the epoch count at every epoch end from the
    # measured epoch time, so the LR schedule ends inside the budget on a slow or fast machine.
    fit_to_budget: bool = False

    def __post_init__(self) -> None:
        at_least_one = (lambda v: v >= 1, ">= 1")
        require_bounds("train", self, {
            "epochs": at_least_one, "batch_size": at_least_one, "threads": NON_NEGATIVE,
            "checkpoint_every": NON_NEGATIVE, "log_every": at_least_one, "max_nonfinite": at_least_one,
            "device": (DEVICES.fullmatch, "auto, cpu, cuda, cuda:N or mps"),
            "precision": ((lambda v: v in ("fp32", "bf16", "fp16")), "fp32, bf16 or fp16")})


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _expand(s: str) -> str:
    def sub(m: re.Match) -> str:
        name = m.group(1)
        if name in os.environ:
            return os.environ[name]
        if name == ENV_VAR:
            root = data_root()
            if root is not None:
                return str(root)
        raise ConfigError(f"${{{name}}} is not set (needed by the config)")

    return re.sub(r"\$\{(\w+)\}", sub, s)


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, str) and tp is ManifestRef:
            value = {"manifest": value}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build_dataclass(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            value = [value]
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        if args:
            return {k: _convert(v, args[1], f"{where}.{k}") for k, v in value.items()}
        return {k: (_expand(v) if isinstance(v, str) else v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return _expand(str(value))
    return value


def build_dataclass(cls, values: dict, where: str = "", noun: str = "key"):
    """A ``cls`` dataclass from a plain tree, strictly: unknown keys and wrong types raise ``ConfigError``
    naming the option (``where`` is the dotted prefix the names are reported under, ``noun`` what a
    key is called in the message: "unknown key train.bacth_size; known: ...")."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown {noun} {where + '.' if where else ''}{sorted(unknown)[0]}; "
                          f"known: {', '.join(sorted(names))}")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in values.items()}
    return cls(**kwargs)


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {k} is not a section")
    node[keys[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        raw = _expand(raw)  # before parsing: an unquoted ${VAR} is not valid YAML
        try:
            value = load_yaml(raw) if raw else ""
        except yaml.YAMLError:
            value = raw
        _set_path(tree, key.strip(), value)
    return tree


def merge_trees(base: dict, extra: dict) -> dict:
    """``extra`` merged over ``base``, nested dicts merged key by key (neither is modified)."""
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge_trees(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _replaces(base: Any, extra: Any) -> bool:
    """A section that names a different ``name`` (another method or optimiser) replaces the base's
    section instead of merging into it: the base's options belong to its method."""
    return isinstance(base, dict) and isinstance(extra, dict) and "name" in extra and extra["name"] != base.get("name")


def recipe_folder() -> Path:
    """The recipes installed with the package (``sslspeaker/configs/``; the repository's ``configs`` links to it)."""
    return Path(__file__).resolve().parent / "configs"


def packaged_recipes() -> dict[str, Path]:
    """Name (file name without ``.yaml``) -> path of every packaged recipe, sorted by name."""
    return {p.stem: p for p in sorted(recipe_folder().glob("*.yaml"))}


def find_recipe(name_or_path: str | os.PathLike) -> Path:
    """A recipe file: ``name_or_path`` itself when it exists or names a folder, else the packaged recipe of
    that name (``moco_speechocean762`` or ``moco_speechocean762.yaml``); a missing one stays as given."""
    path = Path(name_or_path)
    if path.exists() or len(path.parts) != 1:
        return path
    return packaged_recipes().get(path.name[:-5] if path.suffix == ".yaml" else path.name, path)


def read_recipe(path: str | os.PathLike, _seen: tuple = ()) -> dict:
    """A recipe's tree, with its ``base:`` recipe (a path relative to it) merged underneath."""
    path = Path(path)
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: base recipes form a cycle ({' -> '.join(str(p) for p in _seen)})")
    try:
        tree = load_yaml(path.read_text()) or {}
    except FileNotFoundError:
        hint = "" if _seen else " (not a file, nor a packaged recipe: sslspeaker train --list names them)"
        raise ConfigError(f"{path}: no such recipe{hint}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of sections")
    base = tree.pop("base", None)
    if base is None:
        return tree
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be the path of another recipe, got {base!r}")
    parent = read_recipe(path.parent / base, (*_seen, path.resolve()))
    for key, section in tree.items():
        parent[key] = section if _replaces(parent.get(key), section) else merge_trees(parent, {key: section})[key]
    return parent


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Config:
    """Recipe (a file, or a packaged recipe's name; or defaults) + overrides -> a checked ``Config``."""
    tree = read_recipe(find_recipe(path)) if path is not None else {}
    tree = merge_trees(tree, parse_overrides(overrides or []))
    try:
        return build_dataclass(Config, tree, "")
    except ConfigError as exc:
        raise ConfigError(f"{path or 'config'}: {exc}") from None


def config_from_dict(tree: dict) -> Config:
    return build_dataclass(Config, tree, "")


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """The resolved config as YAML, written atomically (a temporary file of this process, then a rename)."""
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
