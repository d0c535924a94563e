"""Name → Method class. ``build_method`` rejects unknown names and options with a ValueError."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from torch import nn

from .base import Method

_METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make ``cls`` buildable as ``build_method(name, ...)``."""

    def register(cls: type[Method]) -> type[Method]:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method {name!r} is already registered ({_METHODS[name].__qualname__})")
        _METHODS[name] = cls
        return cls

    return register


def _option_names(cls: type[Method]) -> set[str] | None:
    """Keyword options ``cls.__init__`` takes after the encoder; None if it takes **kwargs."""
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, encoder
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def build_method(name: str, encoder: nn.Module, **options: Any) -> Method:
    """The method registered as ``name`` around ``encoder``, configured by ``options``."""
    if name not in _METHODS:
        raise ValueError(f"unknown method {name!r}; known: {', '.join(sorted(_METHODS))}")
    cls = _METHODS[name]
    known = _option_names(cls)
    unknown = sorted(set(options) - known) if known is not None else []
    if unknown:
        raise ValueError(
            f"method {name!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
        )
    return cls(encoder, **options)


def list_methods() -> dict[str, str]:
    """Registered names with the first line of each class docstring."""
    return {name: (inspect.getdoc(cls) or "").split("\n", 1)[0] for name, cls in sorted(_METHODS.items())}
