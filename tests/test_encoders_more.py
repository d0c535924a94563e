"""ResNet-34, ECAPA-TDNN, TDNN, the new pooling layers and the projection heads."""

import copy

import pytest
import torch
import torch.nn.functional as F

from sslspeaker.inference.model_file import pinned_options
from sslspeaker.models import build_encoder, build_head, build_pooling, list_encoders, list_heads
from sslspeaker.models.pooling import ContextAttentiveStatisticsPooling, TemporalStatisticsPooling

# name -> (options, exact parameter count, published count or None). 80 mels unless stated.
ENCODERS = {
    "resnet34": ({}, 6_634_336, 6.63e6),  # WeSpeaker ResNet34-TSTP-emb256, 80 fbank
    "ecapa_tdnn": ({}, 14_657_472, 14.7e6),  # C=1024, 80 mels, 192-d
    "ecapa_tdnn_512": ({"channels": 512}, 6_191_104, 6.2e6),  # C=512
    "fast_resnet34": ({"n_mels": 40}, 1_404_054, 1.4e6),  # 256-d (MoCoVox); independent of n_mels
    "tdnn": ({}, 4_354_964, None),  # x-vector with 80-mel input (published with 24-30-d MFCC)
}
EMBED = {"resnet34": 256, "ecapa_tdnn": 192, "ecapa_tdnn_512": 192, "fast_resnet34": 256, "tdnn": 512}
# small variants keep the forward-pass tests fast; the architecture is the same
SMALL = {
    "resnet34": {"channels": [8, 16, 32, 64]},
    "ecapa_tdnn": {"channels": 128, "mfa_channels": 192, "se_dim": 32, "attention_dim": 32},
    "fast_resnet34": {"n_mels": 40},
    "tdnn": {"channels": 64, "stats_channels": 96},
}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def build(key, **extra):
    opts, _, _ = ENCODERS[key]
    return build_encoder(key.removesuffix("_512"), **{**opts, **extra})


def small(name, seed=0):
    torch.manual_seed(seed)
    return build_encoder(name, **SMALL[name]).eval()


def feats(batch, frames, n_mels=80, seed=0):
    return torch.randn(batch, n_mels, frames, generator=torch.Generator().manual_seed(seed))


def assert_close_rel(actual, expected, tol):
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=tol, atol=tol * scale)


def test_registry_lists_all():
    assert {"resnet34", "ecapa_tdnn", "tdnn", "fast_resnet34"} <= set(list_encoders())
    assert list_heads() == ["dino", "linear", "mlp", "none"]


@pytest.mark.parametrize("key", list(ENCODERS))
def test_parameter_counts(key):
    _, exact, published = ENCODERS[key]
    model = build(key)
    assert n_params(model) == exact
    assert model.embed_dim == EMBED[key]
    if published:
        assert abs(exact - published) / published < 0.02


def test_resnet34_pooling_options():
    # attention variants use a 128-d bottleneck on the 2560 flattened channel x frequency features
    assert n_params(build_encoder("resnet34", pooling="sap")) == 6_306_912
    assert n_params(build_encoder("resnet34", pooling="asp")) == 6_962_272
    with pytest.raises(ValueError, match="pooling"):
        build_encoder("resnet34", pooling="max")


@pytest.mark.parametrize("name", list(SMALL))
def test_options_survive_model_metadata(name):
    """The model file stores every constructor argument as JSON; rebuilding from it gives the same net."""
    opts = pinned_options(name, SMALL[name])
    n_mels = SMALL[name].get("n_mels", 80)
    opts.pop("n_mels", None)
    assert n_params(build_encoder(name, n_mels=n_mels, **opts)) == n_params(small(name))


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("frames", [1, 7, 50, 201, 613])
def test_output_shape_any_length(name, frames):
    model = small(name)
    with torch.no_grad():
        out = model(feats(2, frames, model.n_mels))
    assert out.shape == (2, model.embed_dim) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(SMALL))
def test_batch_independence_in_eval(name):
    model = small(name)
    x = feats(3, 150, model.n_mels, seed=1)
    with torch.no_grad():
        batched = model(x)
        for i in range(len(x)):
            assert_close_rel(model(x[i : i + 1])[0], batched[i], 1e-5)


@pytest.mark.parametrize("name", list(SMALL))
def test_bf16_autocast_close_to_fp32(name):
    model = small(name)
    x = feats(3, 181, model.n_mels, seed=3)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype == torch.float32  # pooling and the embedding layer stay in float32
    assert F.cosine_similarity(low, ref).min() > 0.99


@pytest.mark.parametrize("key", ["resnet34", "ecapa_tdnn", "tdnn"])
def test_bf16_autocast_full_size(key):
    """The published sizes too (deeper/wider nets accumulate more bf16 rounding)."""
    torch.manual_seed(0)
    model = build(key).eval()
    if key == "resnet34":
        model = model.to(memory_format=torch.channels_last)
    x = feats(2, 120, seed=5)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert F.cosine_similarity(low, ref).min() > 0.99


@pytest.mark.parametrize("name", list(SMALL))
def test_bf16_training_step(name):
    model = small(name).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(feats(4, 61, model.n_mels)).pow(2).mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_resnet34_channels_last_parity():
    model = small("resnet34")
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert cl.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x = feats(2, 143, seed=2)
    with torch.no_grad():
        assert_close_rel(cl(x), model(x), 1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert F.cosine_similarity(cl(x), model(x)).min() > 0.99


def test_tdnn_edge_pad():
    """Without edge padding the net sees 15-frame windows, as in Kaldi; the padded version keeps T outputs."""
    torch.manual_seed(0)
    model = build_encoder("tdnn", **SMALL["tdnn"], edge_pad=False).eval()
    assert model.context == 14
    with torch.no_grad():
        assert model(feats(1, 15)).shape == (1, model.embed_dim)
        with pytest.raises(RuntimeError):
            model(feats(1, 14))


# ---- pooling layers against direct loops ----------------------------------------------------
def test_tstp_matches_loop():
    x = torch.randn(2, 5, 9)
    out = TemporalStatisticsPooling(5)(x)
    for b in range(2):
        for c in range(5):
            v = x[b, c]
            mean = sum(v.tolist()) / 9
            std = (sum((t - mean) ** 2 for t in v.tolist()) / 9) ** 0.5
            assert abs(out[b, c] - mean) < 1e-5 and abs(out[b, 5 + c] - std) < 1e-5
    assert torch.isfinite(TemporalStatisticsPooling(5)(torch.ones(1, 5, 1))).all()  # one frame: std floor
    assert isinstance(build_pooling("TSTP", 5), TemporalStatisticsPooling)


def test_ecapa_attentive_pooling_matches_loop():
    """e_tc = v_c . tanh(W [h_t; mean; std] + b) + k_c; softmax over t per channel; weighted mean, std."""
    torch.manual_seed(0)
    C, T, A = 4, 7, 3
    pool = ContextAttentiveStatisticsPooling(C, attention_dim=A)
    x = torch.randn(2, C, T)
    out = pool(x)
    assert out.shape == (2, 2 * C) and pool.out_dim == 2 * C
    W, b = pool.attention[0].weight[:, :, 0], pool.attention[0].bias
    V, k = pool.attention[2].weight[:, :, 0], pool.attention[2].bias
    with torch.no_grad():
        for i in range(2):
            h = x[i]
            mean, std = h.mean(1), h.var(1, unbiased=False).sqrt()
            e = torch.stack([V @ torch.tanh(W @ torch.cat([h[:, t], mean, std]) + b) + k for t in range(T)], 1)
            for c in range(C):
                w = torch.softmax(e[c], 0)
                mu = sum(w[t] * h[c, t] for t in range(T))
                sd = sum(w[t] * (h[c, t] - mu) ** 2 for t in range(T)).sqrt()
                assert abs(out[i, c] - mu) < 1e-5 and abs(out[i, C + c] - sd) < 1e-5


def test_pooling_runs_in_float32_under_autocast():
    x = torch.randn(2, 6, 20).bfloat16()
    for name in ("tstp", "ecapa_asp", "asp", "sap"):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert build_pooling(name, 6)(x).dtype == torch.float32


# ---- heads -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, opts, out_dim",
    [("none", {}, 32), ("linear", {"out_dim": 16}, 16), ("linear", {}, 32),
     ("mlp", {"hidden_dim": 64, "out_dim": 24}, 24), ("mlp", {"hidden_dim": 64, "out_dim": 24, "last_bn": True}, 24),
     ("dino", {"hidden_dim": 64, "bottleneck_dim": 16, "out_dim": 100}, 100)],
)
def test_head_shapes(name, opts, out_dim):
    head = build_head(name, 32, **opts)
    assert (head.in_dim, head.out_dim) == (32, out_dim)
    out = head(torch.randn(5, 32))
    assert out.shape == (5, out_dim)
    if opts.get("last_bn"):
        assert isinstance(head[-1], torch.nn.BatchNorm1d) and not head[-1].affine


def test_unknown_head():
    with pytest.raises(ValueError, match="dino"):
        build_head("transformer", 8)


def test_dino_head_weight_norm():
    torch.manual_seed(0)
    head = build_head("dino", 32, hidden_dim=64, bottleneck_dim=16, out_dim=50)
    wn = head.last_layer.parametrizations.weight
    g, v = wn.original0, wn.original1
    assert not g.requires_grad and v.requires_grad and head.last_layer.bias is None
    sgd = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=1.0)
    head(torch.randn(8, 32)).logsumexp(1).mean().backward()
    sgd.step()
    # rows stay unit-norm after an update of v, so the logits are cosines in [-1, 1]
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(50))
    out = head(torch.randn(8, 32))
    assert out.abs().max() <= 1 + 1e-5
    free = build_head("dino", 32, hidden_dim=64, bottleneck_dim=16, out_dim=50, norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad
