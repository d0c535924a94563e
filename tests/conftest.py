import numpy as np
import pytest
import soundfile as sf

from sslspeaker.paths import data_root


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
