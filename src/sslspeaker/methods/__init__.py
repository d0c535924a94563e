"""Training objectives around an encoder; importing this package registers them all."""

from .base import Method, momentum_update_
from .registry import build_method, list_methods, register_method
from .moco import MoCo
from . import c3, dino, moco_supcon, proto, simclr, supervised  # noqa: F401,E402  (each registers itself)

__all__ = ["Method", "MoCo", "build_method", "list_methods", "momentum_update_", "register_method"]
