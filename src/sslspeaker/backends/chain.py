"""A fitted sequence of back-end stages plus an optional calibration, storable as (JSON config, named arrays).

The stages before the last transform the embeddings; the last one scores. A model file keeps
``to_state()``'s arrays (under its own prefix, e.g. ``backend.``) and the config in its metadata;
``BackendChain.from_state`` checks both (known names and options, array shapes that agree from
stage to stage, finite values) and every error names the field.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .base import Backend, BackendStateError, as_embeddings
from .calibration import LogisticCalibration
from .registry import build_backend

PRESETS: dict[str, list[str]] = {
    "lda": ["lda"],
    "plda": ["whiten", "lengthnorm", "plda"],
    "lda_plda": ["whiten", "lda", "lengthnorm", "plda"],
}
STATE_VERSION = 1


def stage_spec(entry: Any, where: str) -> tuple[str, dict]:
    """(name, options) from a stage entry: a name, or {"name": ..., "options": {...}}."""
    if isinstance(entry, str):
        return entry, {}
    if not isinstance(entry, dict) or "name" not in entry or not set(entry) <= {"name", "options"}:
        raise BackendStateError(f"{where} must be a back-end name or {{name, options}}, got {entry!r}")
    options = entry.get("options") or {}
    if not isinstance(options, dict):
        raise BackendStateError(f"{where}.options must be a mapping, got {options!r}")
    return entry["name"], options


class BackendChain:
    """Stages (e.g. whiten, lda, lengthnorm, plda) fitted in order on labelled embeddings, then calibration."""

    def __init__(self, stages: Sequence[Backend], calibration: LogisticCalibration | None = None):
        if not stages:
            raise ValueError("a back-end chain needs at least one stage")
        self.stages, self.calibration = list(stages), calibration

    @classmethod
    def build(cls, spec: str | Sequence[Any]) -> "BackendChain":
        """An unfitted chain from a preset name (``PRESETS``) or a list of stage names / {name, options}."""
        if isinstance(spec, str):
            if spec not in PRESETS:
                raise ValueError(f"unknown back-end preset {spec!r}; known: {', '.join(sorted(PRESETS))}")
            spec = PRESETS[spec]
        specs = [stage_spec(entry, f"stages[{i}]") for i, entry in enumerate(spec)]
        return cls([build_backend(name, **options) for name, options in specs])

    @property
    def name(self) -> str:
        """The stage names joined by '+', e.g. 'whiten+lengthnorm+plda'."""
        return "+".join(stage.name for stage in self.stages)

    @property
    def calibrated(self) -> bool:
        return self.calibration is not None

    def fit(self, embeddings, labels) -> "BackendChain":
        """Fit each stage on the previous stages' outputs; drops any calibration (it belongs to the old scores)."""
        x = as_embeddings(embeddings)
        for stage in self.stages[:-1]:
            x = stage.fit(x, labels).transform(x)
        self.stages[-1].fit(x, labels)
        self.calibration = None
        return self

    def _front(self, x) -> np.ndarray:
        """The embeddings through every stage but the scoring one."""
        x = as_embeddings(x, dim=self.stages[0]._fitted_dim())
        for stage in self.stages[:-1]:
            x = stage.transform(x)
        return x

    def transform(self, x) -> np.ndarray:
        return self.stages[-1].transform(self._front(x))

    def score_pairs(self, a, b, calibrated: bool = True) -> np.ndarray:
        """One score per row pair (a_i, b_i); a log-likelihood ratio when calibrated (and ``calibrated``)."""
        a, b = np.asarray(a), np.asarray(b)
        if a.shape[:1] != b.shape[:1]:
            raise ValueError(f"score_pairs needs as many rows in a as in b: {a.shape[:1]} vs {b.shape[:1]}")
        return self._calibrate(self.stages[-1].score_pairs(self._front(a), self._front(b)), calibrated)

    def score_sets(self, enroll: Sequence[np.ndarray], test, calibrated: bool = True) -> np.ndarray:
        """Score test row k against enrolment model k, made of the (n_k, d) embeddings ``enroll[k]``."""
        test = np.asarray(test)
        if len(enroll) != len(test) or any(np.ndim(group) != 2 or len(group) == 0 for group in enroll):
            raise ValueError("score_sets needs one non-empty (n_k, d) enrolment array per test row")
        counts = np.array([len(group) for group in enroll])
        front = self._front(np.concatenate(enroll))
        means = np.add.reduceat(front.astype(np.float64), np.r_[0, np.cumsum(counts)[:-1]]) / counts[:, None]
        scores = self.stages[-1].score_enrolled(means, counts, self._front(test))
        return self._calibrate(scores, calibrated)

    def calibrate(self, a, b, labels, prior: float = 0.5) -> "BackendChain":
        """Fit the logistic calibration on the chain's scores of trials (a_i, b_i) with 0/1 ``labels`` at ``prior``."""
        self.calibration = LogisticCalibration().fit(self.score_pairs(a, b, calibrated=False), labels, prior)
        return self

    def _calibrate(self, scores: np.ndarray, calibrated: bool) -> np.ndarray:
        return self.calibration.apply(scores) if calibrated and self.calibration is not None else scores

    def to_state(self) -> tuple[dict, dict[str, np.ndarray]]:
        """(config, arrays): JSON-able config and float arrays keyed '{index}.{stage}.{name}'."""
        config = {"version": STATE_VERSION, "input_dim": self.stages[0]._fitted_dim(),
                  "stages": [{"name": s.name, "options": s.options()} for s in self.stages],
                  "calibration": self.calibration.to_config() if self.calibration else None}
        arrays = {f"{i}.{s.name}.{key}": np.asarray(value, dtype=np.float64)
                  for i, s in enumerate(self.stages) for key, value in s.arrays().items()}
        return config, arrays

    @classmethod
    def from_state(cls, config: dict, arrays: dict[str, np.ndarray]) -> "BackendChain":
        """The chain ``to_state`` described, every field checked (BackendStateError naming it otherwise)."""
        stages_config, input_dim, calibration = read_config(config)
        stages, dim = [], input_dim
        for i, entry in enumerate(stages_config):
            stage = _build_stage(entry, f"stages[{i}]")
            prefix = f"{i}.{stage.name}."
            try:
                stage.load_arrays(_strip(arrays, prefix), dim)
            except BackendStateError as e:
                raise BackendStateError(f"back-end stages[{i}] {stage.name!r} (arrays '{prefix}*'): {e}") from None
            stages.append(stage)
            dim = stage.output_dim
        chain = cls(stages, LogisticCalibration.from_config(calibration) if calibration is not None else None)
        unknown = sorted(set(arrays) - set(chain.to_state()[1]))
        if unknown:
            raise BackendStateError(f"back-end arrays not used by any stage: {', '.join(unknown)}")
        return chain


def read_config(config: Any) -> tuple[list, int, Any]:
    """(stages, input_dim, calibration) from a chain config with exactly the keys ``to_state`` writes."""
    keys = {"version", "input_dim", "stages", "calibration"}
    if not isinstance(config, dict) or set(config) != keys:
        got = sorted(config) if isinstance(config, dict) else type(config).__name__
        raise BackendStateError(f"back-end config must have keys {', '.join(sorted(keys))}; got {got}")
    if config["version"] != STATE_VERSION:
        raise BackendStateError(f"back-end config version {config['version']!r} is not {STATE_VERSION}")
    dim = config["input_dim"]
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise BackendStateError(f"back-end config input_dim must be a positive integer, got {dim!r}")
    if not isinstance(config["stages"], list) or not config["stages"]:
        raise BackendStateError("back-end config stages must be a non-empty list")
    return config["stages"], dim, config["calibration"]


def _build_stage(entry: Any, where: str) -> Backend:
    name, options = stage_spec(entry, where)
    try:
        return build_backend(name, **options)
    except ValueError as e:
        raise BackendStateError(f"back-end {where}: {e}") from None


def _strip(arrays: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}
