"""The config of a resumed run: the checkpoint's, with the overrides that can change safely.

A resumed run keeps the data, model, method, optimiser and seeds it started with, so that it
continues the same run. Options that only say how long, how often or with what checks it
goes on (``RESUMABLE``) may change; an override that would change anything else is refused,
naming it. An override equal to the saved value changes nothing and is accepted.
"""

from __future__ import annotations

from typing import Any

from ..config import Config, ConfigError, config_from_dict, merge_trees, parse_overrides, to_dict

RESUMABLE = ("train.epochs", "train.fit_to_budget", "train.log_every", "train.checkpoint_every",
             "train.max_nonfinite", "data.workers", "data.prefetch", "validation.")


def resumable(key: str) -> bool:
    """Whether the dotted option ``key`` may change when a run resumes."""
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {dotted key: leaf value} (lists are leaves)."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resumed_config(saved: dict, overrides: list[str] | None) -> tuple[Config, dict[str, list]]:
    """(the checkpoint's config with ``overrides`` applied, {changed option: [saved value, new value]})."""
    old = to_dict(config_from_dict(saved))
    new = config_from_dict(merge_trees(old, parse_overrides(overrides or [])))
    before, after = flatten(old), flatten(to_dict(new))
    changed = {k: [before.get(k), after.get(k)] for k in sorted(set(before) | set(after))
               if before.get(k) != after.get(k)}
    refused = [k for k in changed if not resumable(k)]
    if refused:
        raise ConfigError(f"--resume: {', '.join(refused)} cannot change in a resumed run (it continues the "
                          f"saved run; options that can: {', '.join(RESUMABLE)}); start a new run to change them")
    return new, changed


__all__ = ["RESUMABLE", "resumable", "resumed_config"]
