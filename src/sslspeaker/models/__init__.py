"""Speaker encoders. Importing this package registers every encoder module below."""

from sslspeaker.models.registry import build_encoder, list_encoders, register_encoder

# Encoder modules register themselves on import; add new ones here.
from sslspeaker.models import fast_resnet34  # noqa: E402,F401  (registers "fast_resnet34")
from sslspeaker.models.fast_resnet34 import FastResNet34  # noqa: E402
from sslspeaker.models.pooling import AttentiveStatisticsPooling, SelfAttentivePooling, build_pooling  # noqa: E402

__all__ = [
    "AttentiveStatisticsPooling",
    "FastResNet34",
    "SelfAttentivePooling",
    "build_encoder",
    "build_pooling",
    "list_encoders",
    "register_encoder",
]
