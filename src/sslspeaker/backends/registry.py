"""Name -> back-end class. ``build_backend`` rejects unknown names and options with a ConfigError naming them."""

from __future__ import annotations

import inspect
from typing import Any, Callable, TypeVar

from sslspeaker.config import ConfigError

from .base import Backend

_BACKENDS: dict[str, type[Backend]] = {}

T = TypeVar("T", bound=type[Backend])


def register_backend(name: str) -> Callable[[T], T]:
    """Class decorator: make ``cls`` buildable as ``build_backend(name, ...)``; sets ``cls.name``."""

    def register(cls: T) -> T:
        if name in _BACKENDS and _BACKENDS[name] is not cls:
            raise ValueError(f"back-end {name!r} is already registered ({_BACKENDS[name].__qualname__})")
        cls.name = name
        _BACKENDS[name] = cls
        return cls

    return register


def _option_names(cls: type[Backend]) -> set[str]:
    """Keyword options ``cls.__init__`` takes."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # self
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def backend_class(name: str) -> type[Backend]:
    """The class registered as ``name``."""
    if name not in _BACKENDS:
        raise ConfigError(f"unknown back-end {name!r}; known: {', '.join(sorted(_BACKENDS))}")
    return _BACKENDS[name]


def build_backend(name: str, **options: Any) -> Backend:
    """The (unfitted) back-end registered as ``name``, configured by ``options``."""
    cls = backend_class(name)
    known = _option_names(cls)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"back-end {name!r}: unknown option(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(known)) or '(none)'}")
    return cls(**options)


def list_backends() -> dict[str, str]:
    """Registered names with the first line of each class docstring."""
    return {name: (inspect.getdoc(cls) or "").split("\n", 1)[0] for name, cls in sorted(_BACKENDS.items())}
