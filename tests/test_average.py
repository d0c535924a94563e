"""Weight averaging of runs (the uniform model soup): the mean against a direct computation, the averaged
run folder read back as a model, and runs of different encoders refused."""

import numpy as np
import pytest
import torch

from sslspeaker.config import Config, ConfigError, build_dataclass, to_dict
from sslspeaker.inference.model import SpeakerEncoder
from sslspeaker.models.registry import build_encoder
from sslspeaker.runs import load_checkpoint, run_checkpoint
from sslspeaker.training.average import average_runs, uniform_average
from sslspeaker.training.checkpoint import save_checkpoint


def test_uniform_average_is_the_mean_of_float_tensors_and_keeps_integer_counts():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(9)}
    c = {"w": torch.tensor([5.0, 1.0]), "n": torch.tensor(1)}
    got = uniform_average([a, b, c])
    assert torch.allclose(got["w"], torch.tensor([3.0, 3.0]))
    assert got["n"].item() == 7 and got["n"].dtype == torch.int64


def tiny_run(folder, seed, channels=12, extra=None):
    """A run folder of the tiny test encoder with seeded weights (and a head the average must leave out)."""
    tree = {"model": {"encoder": "tiny_test", "options": {"channels": channels, "embed_dim": 8}},
            "features": {"n_mels": 24}}
    cfg = build_dataclass(Config, tree, "")
    torch.manual_seed(seed)
    enc = build_encoder("tiny_test", n_mels=24, channels=channels, embed_dim=8)
    enc.bn.running_mean.uniform_(-1, 1)
    method = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    method["head.weight"] = torch.randn(3 + seed, 8)
    save_checkpoint(run_checkpoint(folder), {"config": to_dict(cfg), "method": method, "inference_encoder": "encoder",
                                             "position": {"step": 10 * seed, "epoch": seed}, **(extra or {})})
    return enc


def test_averaged_run_embeds_as_an_encoder_with_the_mean_weights(tmp_path):
    encoders = [tiny_run(tmp_path / f"r{i}", seed=i + 1) for i in range(3)]
    average_runs([tmp_path / f"r{i}" for i in range(3)], tmp_path / "avg")
    ckpt = load_checkpoint(run_checkpoint(tmp_path / "avg"))
    assert not any(k.startswith("head.") for k in ckpt["method"])
    assert len(ckpt["averaged_from"]) == 3 and ckpt["position"]["step"] == 30
    direct = build_encoder("tiny_test", n_mels=24, channels=12, embed_dim=8)
    with torch.no_grad():
        for name, p in direct.state_dict().items():
            if p.is_floating_point():
                p.copy_(sum(e.state_dict()[name] for e in encoders) / 3)
    assert torch.allclose(ckpt["method"]["encoder.conv.weight"], direct.conv.weight)
    assert torch.allclose(ckpt["method"]["encoder.bn.running_mean"], direct.bn.running_mean)
    model = SpeakerEncoder.load(tmp_path / "avg", vad=False)
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    direct.eval()
    with torch.no_grad():
        expected = direct(model.features(torch.from_numpy(wave)[None]))
    expected = torch.nn.functional.normalize(expected, dim=-1)[0].numpy()
    np.testing.assert_allclose(model.embed(wave), expected, atol=1e-5)


def test_runs_of_different_encoders_or_too_few_are_refused(tmp_path):
    tiny_run(tmp_path / "a", seed=1)
    tiny_run(tmp_path / "b", seed=2, channels=6)
    with pytest.raises(ConfigError, match=r"b: its model settings differ"):
        average_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "avg")
    with pytest.raises(ConfigError, match="at least 2 runs"):
        average_runs([tmp_path / "a"], tmp_path / "avg")
    with pytest.raises(ConfigError, match="no such model, checkpoint or run folder"):
        average_runs([tmp_path / "a", tmp_path / "missing"], tmp_path / "avg")
    assert not run_checkpoint(tmp_path / "avg").exists()
