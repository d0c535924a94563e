"""Inference: the ``.safetensors`` model file (``model_file``) and the ``SpeakerEncoder`` Python API (``model``).

Exporting a training run to a model file is ``sslspeaker.training.export.export_model``.
"""

from sslspeaker.inference.model import SpeakerEncoder
from sslspeaker.inference.model_file import (NO_DEFAULT_MODEL, ModelError, NoDefaultModelError, default_model_path,
                                             read_model_file, resolve_model_path, set_threshold)

__all__ = ["NO_DEFAULT_MODEL", "ModelError", "NoDefaultModelError", "SpeakerEncoder", "default_model_path",
           "read_model_file", "resolve_model_path", "set_threshold"]
