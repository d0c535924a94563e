import numpy as np
import pytest
import soundfile as sf
import torch
from torch import nn

from sslspeaker.models.registry import register_encoder
from sslspeaker.paths import data_root


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny tensors on a 2-core machine: intra-op threads only add contention (often 10x slower).
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@register_encoder("tiny_test")
class TinyEncoder(nn.Module):
    """Encoder interface stand-in: [B, n_mels, frames] -> [B, embed_dim]; BatchNorm makes batch-mates interact."""

    def __init__(self, n_mels: int = 6, channels: int = 12, embed_dim: int = 8) -> None:
        super().__init__()
        self.n_mels, self.embed_dim = n_mels, embed_dim
        self.conv = nn.Conv1d(n_mels, channels, 3, padding=1)
        self.bn = nn.BatchNorm1d(channels)
        self.fc = nn.Linear(channels, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=-1))


def write_audio(path, seconds=1.0, sr=16000, channels=1, freq=220.0, amplitude=0.3, subtype="PCM_16"):
    """A tone with a little noise, written with soundfile; returns the samples written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    x = amplitude * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    x = np.stack([x] * channels, axis=1) if channels > 1 else x
    sf.write(str(path), x.astype(np.float32), sr, subtype=subtype)
    return x


@pytest.fixture
def shared_data():
    root = data_root()
    if root is None or not (root / "speechocean762").is_dir():
        pytest.skip("shared data (../shared/data or $SSLSPEAKER_DATA) not present")
    return root
