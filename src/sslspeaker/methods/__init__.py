"""Training objectives around an encoder; importing this package registers them all."""

from .base import Method, momentum_update_
from .registry import build_method, list_methods, register_method
from . import moco  # noqa: F401  (registers "moco")
from .moco import MoCo
from . import moco_supcon, proto, simclr, supervised  # noqa: F401,E402  (register the in-batch / supervised methods)

__all__ = ["Method", "MoCo", "build_method", "list_methods", "momentum_update_", "register_method"]
