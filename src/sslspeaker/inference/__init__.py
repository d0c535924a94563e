"""Inference: the ``.safetensors`` model format and the ``SpeakerEncoder`` Python API."""

from sslspeaker.inference.model import (NO_DEFAULT_MODEL, ModelError, NoDefaultModelError, SpeakerEncoder,
                                        default_model_path, export_model, load_model, read_model_file,
                                        resolve_model_path, set_threshold)

__all__ = ["NO_DEFAULT_MODEL", "ModelError", "NoDefaultModelError", "SpeakerEncoder", "default_model_path",
           "export_model", "load_model", "read_model_file", "resolve_model_path", "set_threshold"]
