"""Augmentation of training views: additive noise (MUSAN-style categories), reverberation, channel (EQ, band)."""

from .augmenter import APPLY_TO, MODES, AugmentConfig, Augmenter, ViewAug
from .channel import equalise, low_pass
from .noise import NoiseBank, combine_sources, mix_at_snr
from .reverb import RirBank, prepare_rir, reverberate

__all__ = [
    "APPLY_TO",
    "MODES",
    "AugmentConfig",
    "Augmenter",
    "NoiseBank",
    "RirBank",
    "ViewAug",
    "combine_sources",
    "equalise",
    "low_pass",
    "mix_at_snr",
    "prepare_rir",
    "reverberate",
]
