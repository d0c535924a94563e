"""Exceptions the ``sslspeaker`` command turns into one line and an exit code (see ``cli.main``).

A command raises; it never prints its own error. Anything that is a ``ValueError`` (config,
model, demo errors subclass it), a missing or unwritable file, or unreadable audio becomes
``error: MESSAGE`` and exit code 2; a ``Stopped`` run becomes ``stopped: MESSAGE`` and exit code 3.
A feature whose optional extra is not installed raises ``MissingExtraError`` (``require_extra``),
and a missing module of an extra met anywhere else becomes one too (``missing_extra``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Top-level module -> the extra of pyproject.toml that installs it.
EXTRAS = {"scipy": "train", "sklearn": "train", "matplotlib": "plots", "onnx": "export", "onnxruntime": "export",
          "onnxscript": "export", "kaldiio": "kaldi", "tensorboard": "tensorboard"}


class Stopped(RuntimeError):
    """A long job ended early for a stated reason (diverged, no data left); its state is kept."""


class MissingExtraError(ImportError):
    """A feature needs an optional extra that is not installed: the message names it."""


def extra_message(feature: str, extra: str, module: str) -> str:
    """``FEATURE needs the EXTRA extra (MODULE is not installed): pip install 'sslspeaker[EXTRA]'``."""
    return f"{feature} needs the {extra} extra ({module} is not installed): pip install 'sslspeaker[{extra}]'"


def require_extra(module: str, feature: str) -> ModuleType:
    """``import module``, or ``MissingExtraError`` naming ``feature`` and the extra that installs ``module``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        raise MissingExtraError(extra_message(feature, EXTRAS.get(top, top), top)) from exc


def missing_extra(exc: ImportError) -> MissingExtraError | None:
    """The ``MissingExtraError`` for an ``ImportError`` of a module an extra installs (else None)."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if name not in EXTRAS:
        return None
    return MissingExtraError(extra_message("this command", EXTRAS[name], name))
