"""Where the development data lives: ``$SSLSPEAKER_DATA``, else ``../shared/data`` if present."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "SSLSPEAKER_DATA"


def data_root(required: bool = False) -> Path | None:
    """The shared data root, or None (or an error when ``required``) if there is none."""
    env = os.environ.get(ENV_VAR)
    if env:
        root = Path(env).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f"{ENV_VAR}={env} is not a directory")
        return root.resolve()
    for candidate in (Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[3] / ".." / "shared" / "data"):
        if candidate.is_dir():
            return candidate.resolve()
    if required:
        raise FileNotFoundError(f"no data root: set {ENV_VAR} to the folder holding the corpora (e.g. ../shared/data)")
    return None
