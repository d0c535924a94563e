"""Inference: the ``.safetensors`` model file (``model_file``) and the ``SpeakerEncoder`` Python API (``model``).

Exporting a training run to a model file is ``sslspeaker.training.export.export_model``. The
names below load on first use, so ``sslspeaker.inference.onnx_model`` (the torch-free ONNX
encoder) can be imported without torch.
"""

import importlib

_WHERE = {"SpeakerEncoder": "model", "OnnxSpeakerEncoder": "onnx_model", "NO_DEFAULT_MODEL": "model_file",
          "ModelError": "model_file", "NoDefaultModelError": "model_file", "default_model_path": "model_file",
          "read_model_file": "model_file", "resolve_model_path": "model_file", "set_threshold": "model_file"}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)


__all__ = sorted(_WHERE)
