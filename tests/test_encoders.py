"""Encoder registry and Fast ResNet-34: size, shapes, batch independence, CPU fast paths."""

import copy

import pytest
import torch
import torch.nn.functional as F

from sslspeaker.models import build_encoder, list_encoders, register_encoder
from sslspeaker.models.pooling import AttentiveStatisticsPooling, SelfAttentivePooling, build_pooling

PARAMS_256 = 1_404_054  # MoCoVox variant (256-d embedding, SAP)
PARAMS_512 = 1_437_078  # ResNetSE34L as published (512-d), reported as ~1.4 M
PUBLISHED_512 = 1.4e6


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_encoder("fast_resnet34").eval()


def feats(batch, frames, n_mels=40, seed=0):
    return torch.randn(batch, n_mels, frames, generator=torch.Generator().manual_seed(seed))


def assert_close_rel(actual, expected, tol):
    """Elementwise closeness scaled by the embedding's magnitude (eval-mode BN has untrained stats)."""
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


def test_registry():
    assert "fast_resnet34" in list_encoders()
    with pytest.raises(ValueError, match="fast_resnet34"):  # the message lists the known encoders
        build_encoder("no_such_encoder")
    with pytest.raises(ValueError, match="already registered"):
        register_encoder("fast_resnet34")(torch.nn.Linear)


def test_parameter_counts():
    model = build_encoder("fast_resnet34")
    assert (model.embed_dim, model.n_mels) == (256, 40)
    assert n_params(model) == PARAMS_256
    published = build_encoder("fast_resnet34", embed_dim=512)
    assert n_params(published) == PARAMS_512
    assert abs(PARAMS_512 - PUBLISHED_512) / PUBLISHED_512 < 0.05
    # ASP doubles the pooled dimension: only the final linear layer grows (128 * 256 more weights)
    assert n_params(build_encoder("fast_resnet34", pooling="asp")) == PARAMS_256 + 128 * 256


@pytest.mark.parametrize("frames", [201, 57, 1003, 5])
def test_output_shape_any_length(model, frames):
    with torch.no_grad():
        out = model(feats(2, frames))
    assert out.shape == (2, 256) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_asp_shape_and_backward():
    model = build_encoder("fast_resnet34", pooling="asp", embed_dim=128)
    out = model(feats(3, 101))
    assert out.shape == (3, 128)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_input_norm_option():
    """input_norm=True makes the encoder invariant to a per-band offset and gain over time."""
    torch.manual_seed(0)
    model = build_encoder("fast_resnet34", input_norm=True).eval()
    x = feats(2, 120, seed=4)
    shifted = x * torch.rand(1, 40, 1) * 3 + torch.randn(1, 40, 1) * 5
    with torch.no_grad():
        assert_close_rel(model(shifted), model(x), 1e-4)


def test_rejects_wrong_feature_shape(model):
    with pytest.raises(ValueError, match="40"):
        model(feats(2, 100, n_mels=80))


def test_batch_independence_in_eval(model):
    x = feats(4, 201, seed=1)
    with torch.no_grad():
        batched = model(x)
        for i in range(len(x)):
            assert_close_rel(model(x[i : i + 1])[0], batched[i], 1e-5)


def test_channels_last_matches_default(model):
    x = feats(3, 181, seed=2)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert cl_model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert_close_rel(cl_model(x), model(x), 1e-4)


def test_bf16_autocast_close_to_fp32(model):
    x = feats(3, 181, seed=3)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = cl_model(x)
    assert low.dtype == torch.float32  # pooling and projection stay in float32
    assert F.cosine_similarity(low, ref).min() > 0.99


def test_bf16_autocast_training_step():
    model = build_encoder("fast_resnet34").to(memory_format=torch.channels_last).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(feats(4, 61)).pow(2).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_pooling_modules():
    x = torch.randn(2, 8, 30)
    assert isinstance(build_pooling("SAP", 8), SelfAttentivePooling)
    sap, asp = SelfAttentivePooling(8), AttentiveStatisticsPooling(8)
    asp.load_state_dict(sap.state_dict())
    mean = sap(x)
    assert mean.shape == (2, 8) and asp(x).shape == (2, 16)
    torch.testing.assert_close(asp(x)[:, :8], mean)
    # constant frames: the weighted mean is that frame and the std is the floor, not NaN
    const = torch.ones(1, 8, 10) * 3
    torch.testing.assert_close(sap(const), torch.full((1, 8), 3.0))
    assert torch.isfinite(asp(const)).all()
    with pytest.raises(ValueError):
        build_pooling("mean", 8)


def test_registry_lookup():
    from sslspeaker.models import FastResNet34, TDNN
    from sslspeaker.models.registry import get_encoder

    assert get_encoder("fast_resnet34") is FastResNet34 and get_encoder("tdnn") is TDNN
    with pytest.raises(ValueError, match="unknown encoder 'nope'; known encoders: .*fast_resnet34"):
        get_encoder("nope")
