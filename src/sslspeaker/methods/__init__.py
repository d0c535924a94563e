"""Training objectives around an encoder; importing this package registers them all."""

from .base import EpochContext, Method, momentum_update_
from .options import Options, option
from .registry import build_method, fit_options_to_pool, list_methods, method_options, register_method
from .moco import EncodedPairs, MoCo, MoCoOptions
from . import c3, dino, moco_supcon, proto, simclr, supervised  # noqa: F401,E402  (each registers itself)

__all__ = ["EncodedPairs", "EpochContext", "Method", "MoCo", "MoCoOptions", "Options", "build_method",
           "fit_options_to_pool", "list_methods", "method_options", "momentum_update_", "option", "register_method"]
