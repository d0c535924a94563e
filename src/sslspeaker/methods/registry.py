"""Name → Method class. ``build_method`` rejects unknown names and options with a ValueError."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from .base import Method
from .options import OptionInfo, describe_options

_METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make ``cls`` buildable as ``build_method(name, ...)``; sets ``cls.name``."""

    def register(cls: type[Method]) -> type[Method]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered ({_METHODS[name].__qualname__})")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return register


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def build_method(name: str, encoder: nn.Module, **options: Any) -> Method:
    """The method registered as ``name`` around ``encoder``, configured by ``options`` (read strictly)."""
    cls = method_class(name)
    return cls(encoder, cls.read_options(options))


def fit_options_to_pool(name: str, options: dict, n_examples: int, batch_size: int) -> dict:
    """A new options dict for method ``name`` fitted to a pool of ``n_examples`` read in batches of
    ``batch_size`` (the MoCo family caps ``queue_size`` at the keys of one epoch; others: unchanged)."""
    return method_class(name).fit_options_to_pool(dict(options), n_examples, batch_size)


def list_methods() -> dict[str, str]:
    """Registered names with the first line of each class docstring."""
    return {name: (inspect.getdoc(cls) or "").split("\n", 1)[0] for name, cls in sorted(_METHODS.items())}


def method_options(name: str) -> list[OptionInfo]:
    """The options of method ``name`` with their defaults and one line of help each."""
    return describe_options(method_class(name).Options)
