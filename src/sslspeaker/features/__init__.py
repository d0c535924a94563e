"""Acoustic features computed in torch: log mel filterbanks."""

from .mel import LogMel, hz_to_mel, mel_filterbank, mel_to_hz

__all__ = ["LogMel", "hz_to_mel", "mel_filterbank", "mel_to_hz"]
