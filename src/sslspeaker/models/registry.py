"""Name -> encoder-class registry, so configs can pick an encoder by string.

Encoder interface (every registered encoder follows it):
    forward(features: Tensor[B, n_mels, frames]) -> Tensor[B, embed_dim]   (not normalised)
    attributes ``embed_dim`` and ``n_mels``; any number of frames is accepted.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from torch import nn

_ENCODERS: dict[str, Callable[..., nn.Module]] = {}

T = TypeVar("T", bound=Callable[..., nn.Module])


def register_encoder(name: str) -> Callable[[T], T]:
    """Class decorator: make ``build_encoder(name, ...)`` construct the decorated class."""

    def decorator(cls: T) -> T:
        if name in _ENCODERS and _ENCODERS[name] is not cls:
            raise ValueError(f"encoder {name!r} is already registered to {_ENCODERS[name]!r}")
        _ENCODERS[name] = cls
        return cls

    return decorator


def get_encoder(name: str) -> Callable[..., nn.Module]:
    """The class (or factory) registered as ``name``; ``ValueError`` naming the known ones if none is."""
    try:
        return _ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {', '.join(list_encoders()) or '(none)'}") from None


def build_encoder(name: str, **kwargs) -> nn.Module:
    """Instantiate the encoder registered as ``name`` with ``kwargs``."""
    return get_encoder(name)(**kwargs)


def list_encoders() -> list[str]:
    """Sorted names of all registered encoders."""
    return sorted(_ENCODERS)
