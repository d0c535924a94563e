"""Training run folder or ``.pt`` checkpoint -> a self-contained ``.safetensors`` model file."""

from __future__ import annotations

import os
from pathlib import Path

from ..fileio import utc_now
from ..inference.checkpoint_source import read_checkpoint
from ..inference.model_file import build_modules, embed_dim, save_model


def export_model(checkpoint_or_run_dir: str | os.PathLike, out_path: str | os.PathLike,
                 threshold: float | None = None, threshold_source: str | None = None) -> Path:
    """Write the checkpoint's encoder, its front end's settings and (optionally) a decision threshold."""
    from .. import __version__

    state, meta, _ = read_checkpoint(checkpoint_or_run_dir)
    encoder, _ = build_modules(meta, state, str(checkpoint_or_run_dir))  # checks the weights fit
    meta["embed_dim"] = embed_dim(encoder, meta)
    if threshold is not None:
        meta["threshold"] = float(threshold)
        meta["threshold_source"] = threshold_source or "given at export"
    meta["provenance"].update(exported=utc_now(), sslspeaker=__version__)
    return save_model(out_path, encoder.state_dict(), meta)


__all__ = ["export_model"]
