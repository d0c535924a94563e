"""sslspeaker: self-supervised speaker embeddings and speaker verification.

``from sslspeaker import SpeakerEncoder`` is the Python API (``sslspeaker.inference.SpeakerEncoder``);
it is imported on first use, so ``import sslspeaker`` alone (the command's ``--version``) stays light.
"""

__version__ = "0.1.0"

__all__ = ["SpeakerEncoder", "__version__"]


def __getattr__(name: str):
    if name == "SpeakerEncoder":
        from .inference.model import SpeakerEncoder

        return SpeakerEncoder
    raise AttributeError(f"module 'sslspeaker' has no attribute {name!r}")
