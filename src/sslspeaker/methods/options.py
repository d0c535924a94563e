"""Method options: each method declares a dataclass of them (a subclass extends its parent's), read
strictly by ``config.build_dataclass`` (unknown option or wrong type: an error naming it).

A field is declared with ``option(default, help)``: the one-line help ``sslspeaker train --list``
prints beside the default.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..config import build_dataclass

HELP = "help"


def option(default: Any, help: str) -> Any:
    """A dataclass field with a default (a fresh copy each time for lists and dicts) and one line of help."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata={HELP: help})
    return dataclasses.field(default=default, metadata={HELP: help})


@dataclass
class Options:
    """No options (the base of every method's options)."""


class OptionInfo(NamedTuple):
    name: str
    default: Any
    help: str


def read_options(cls: type[Options], values: dict[str, Any], where: str) -> Options:
    """``cls`` from a plain mapping, strictly (``where``: the method name the errors report)."""
    return build_dataclass(cls, dict(values), where, noun="option")


def describe_options(cls: type[Options]) -> list[OptionInfo]:
    """Every option of ``cls`` with its default and help, in declaration order (parents' first)."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append(OptionInfo(f.name, default, f.metadata.get(HELP, "")))
    return out


__all__ = ["OptionInfo", "Options", "describe_options", "option", "read_options"]
