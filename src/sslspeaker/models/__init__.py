"""Speaker encoders. Importing this package registers every encoder module below."""

from sslspeaker.models.registry import build_encoder, list_encoders, register_encoder

# Encoder modules register themselves on import; add new ones here.
from sslspeaker.models import ecapa_tdnn, fast_resnet34, resnet34, tdnn  # noqa: E402,F401  (register encoders)
from sslspeaker.models.ecapa_tdnn import ECAPATDNN  # noqa: E402
from sslspeaker.models.fast_resnet34 import FastResNet34  # noqa: E402
from sslspeaker.models.heads import build_head, list_heads  # noqa: E402
from sslspeaker.models.pooling import (AttentiveStatisticsPooling, ContextAttentiveStatisticsPooling,  # noqa: E402
                                       SelfAttentivePooling, TemporalStatisticsPooling, build_pooling)
from sslspeaker.models.resnet34 import ResNet34  # noqa: E402
from sslspeaker.models.tdnn import TDNN  # noqa: E402

__all__ = [
    "AttentiveStatisticsPooling",
    "ContextAttentiveStatisticsPooling",
    "ECAPATDNN",
    "FastResNet34",
    "ResNet34",
    "SelfAttentivePooling",
    "TDNN",
    "TemporalStatisticsPooling",
    "build_encoder",
    "build_head",
    "build_pooling",
    "list_encoders",
    "list_heads",
    "register_encoder",
]
