"""In-batch, prototypical, supervised and semi-supervised methods: each loss against a loop over
its equation, every registered method's forward/backward, label handling, DDP gradients of the
gathered negatives (2-process gloo), and every recipe building its method."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch

import torch.nn.functional as F
from torch import nn

from conftest import TinyEncoder
from sslspeaker.methods import build_method, list_methods
from sslspeaker.methods.losses import (aam_softmax_logits, am_softmax_logits, angular_prototypical_logits, info_nce,
                                       nt_xent, positive_top1, prototypical_logits, supcon)
from sslspeaker.methods.views import encode_views

N_MELS, FRAMES, DIM = 6, 10, 8
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
NEW_METHODS = ("simclr", "proto", "angproto", "softmax", "amsoftmax", "aamsoftmax", "aamsupcon", "moco_supcon")
SUPERVISED = ("softmax", "amsoftmax", "aamsoftmax", "aamsupcon", "moco_supcon")
OPTIONS = {"softmax": {"n_classes": 5}, "amsoftmax": {"n_classes": 5}, "aamsoftmax": {"n_classes": 5},
           "aamsupcon": {"n_classes": 5}, "moco_supcon": {"queue_size": 32}, "moco": {"queue_size": 32}}




def feats(batch: int, views: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, views, N_MELS, FRAMES, generator=torch.Generator().manual_seed(seed))


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def make(name: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_method(name, TinyEncoder(), **{**OPTIONS.get(name, {}), **options})


def lse_loss(pos: float, negs: list[float], tau: float, margin: float = 0.0) -> float:
    """−log e^((pos−m)/τ) / (e^((pos−m)/τ) + Σ e^(neg/τ))."""
    p = math.exp((pos - margin) / tau)
    return -math.log(p / (p + sum(math.exp(n / tau) for n in negs)))


# ---- equations vs loops ---------------------------------------------------------------------
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("margin", [0.0, 0.2])
def test_nt_xent_matches_loop(symmetric, margin):
    N, tau = 5, 0.1
    z = unit(N, 2, 7)
    dot = lambda a, b: float(a @ b)  # noqa: E731
    terms = []
    for i in range(N):
        if symmetric:  # both views anchor; negatives: both views of every other utterance
            for v in (0, 1):
                negs = [dot(z[i, v], z[j, w]) for j in range(N) if j != i for w in (0, 1)]
                assert len(negs) == 2 * N - 2
                terms.append(lse_loss(dot(z[i, v], z[i, 1 - v]), negs, tau, margin))
        else:  # view 0 anchors against the view-1 embeddings
            negs = [dot(z[i, 0], z[j, 1]) for j in range(N) if j != i]
            terms.append(lse_loss(dot(z[i, 0], z[i, 1]), negs, tau, margin))
    assert float(nt_xent(z, tau, margin, symmetric)) == pytest.approx(sum(terms) / len(terms), abs=1e-5)

    # a rank's shard (utterances 2, 3) against the gathered batch: the same terms, only those anchors
    shard = [t for k, t in enumerate(terms) if (k // 2 if symmetric else k) in (2, 3)]
    local = nt_xent(z[2:4], tau, margin, symmetric, z_all=z, offset=2)
    assert float(local) == pytest.approx(sum(shard) / len(shard), abs=1e-5)


def test_nt_xent_float32_under_bf16_autocast():
    z = unit(6, 2, 16).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = nt_xent(z.bfloat16(), 0.07, 0.1)
    assert out.dtype == torch.float32 and torch.isfinite(out)
    assert float(out) == pytest.approx(float(nt_xent(z.bfloat16().float(), 0.07, 0.1)), abs=1e-5)


def test_prototypical_and_angular_logits_match_loop():
    g = torch.Generator().manual_seed(3)
    q, c = torch.randn(4, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    p = prototypical_logits(q, c)
    w, b = torch.tensor(7.0), torch.tensor(-2.0)
    ap = angular_prototypical_logits(q, c, w, b)
    ap_neg_w = angular_prototypical_logits(q, c, torch.tensor(-3.0), b)
    for i in range(4):
        for j in range(6):
            assert float(p[i, j]) == pytest.approx(-sum((float(q[i, d]) - float(c[j, d])) ** 2 for d in range(5)),
                                                   abs=1e-5)
            cos = float(q[i] @ c[j]) / (float(q[i].norm()) * float(c[j].norm()))
            assert float(ap[i, j]) == pytest.approx(7.0 * cos - 2.0, abs=1e-5)
            assert float(ap_neg_w[i, j]) == pytest.approx(1e-6 * cos - 2.0, abs=1e-5)  # w clamped at 1e-6


def test_margin_softmax_logits_match_loop():
    g = torch.Generator().manual_seed(4)
    cos = torch.rand(6, 5, generator=g, dtype=torch.float64) * 2 - 1
    cos[0, 2], cos[1, 0] = -0.999, 0.9999  # target past π − m (linear branch); target near θ = 0
    labels = torch.tensor([2, 0, 4, 1, 3, 3])
    m, s = 0.2, 30.0
    am = am_softmax_logits(cos, labels, m, s)
    aam = aam_softmax_logits(cos, labels, m, s)
    easy = aam_softmax_logits(cos, labels, m, s, easy_margin=True)
    for i in range(6):
        for j in range(5):
            c = float(cos[i, j])
            if j != labels[i]:
                assert float(am[i, j]) == pytest.approx(s * c, abs=1e-5)
                assert float(aam[i, j]) == pytest.approx(s * c, abs=1e-5) and float(easy[i, j]) == float(aam[i, j])
                continue
            theta = math.acos(c)
            assert float(am[i, j]) == pytest.approx(s * (c - m), abs=1e-5)
            expected = math.cos(theta + m) if theta + m < math.pi else c - m * math.sin(m)
            assert float(aam[i, j]) == pytest.approx(s * expected, abs=1e-4)
            assert float(easy[i, j]) == pytest.approx(s * (math.cos(theta + m) if c > 0 else c), abs=1e-4)
    assert float(aam[0, 2]) == pytest.approx(s * (-0.999 - m * math.sin(m)), abs=1e-4)


def supcon_loop(z, labels, tau, margin=0.0):
    terms = []
    for i in range(len(labels)):
        if labels[i] < 0:
            continue
        A = [a for a in range(len(labels)) if a != i and labels[a] >= 0]
        P = [p for p in A if labels[p] == labels[i]]
        if not P:
            continue

        def logit(a):
            return (float(z[i] @ z[a]) - (margin if a in P else 0.0)) / tau

        denom = sum(math.exp(logit(a)) for a in A)
        terms.append(-sum(math.log(math.exp(logit(p)) / denom) for p in P) / len(P))
    return terms


def test_supcon_margin_on_the_positives_matches_loop():
    labels = torch.tensor([0, 1, 0, -1, 2, 1, 0, -1, 3])
    z = unit(9, 6, seed=5)
    terms = supcon_loop(z, labels.tolist(), 0.1, margin=0.2)
    assert float(supcon(z, labels, 0.1, margin=0.2)) == pytest.approx(sum(terms) / 5, abs=1e-5)
    assert float(supcon(z, labels, 0.1, margin=0.2)) > float(supcon(z, labels, 0.1))  # a margin asks for more


def test_supcon_matches_loop_with_several_positives_and_unlabelled_rows():
    labels = torch.tensor([0, 1, 0, -1, 2, 1, 0, -1, 3])  # speaker 0: 3 rows; 2, 3: no positive; -1: ignored
    z = unit(9, 6, seed=5)
    tau = 0.1
    terms = supcon_loop(z, labels.tolist(), tau)
    assert len(terms) == 5  # rows 0, 1, 2, 5, 6
    assert float(supcon(z, labels, tau)) == pytest.approx(sum(terms) / 5, abs=1e-5)
    # an unlabelled row changes nothing, whatever its embedding
    z2 = z.clone()
    z2[3] = unit(6, seed=9)
    assert float(supcon(z2, labels, tau)) == pytest.approx(float(supcon(z, labels, tau)), abs=1e-12)
    # shard of rows 4..8 against the whole batch, summed
    local = supcon(z[4:], labels[4:], tau, z_all=z, labels_all=labels, offset=4, reduction="sum")
    assert float(local) == pytest.approx(sum(supcon_loop(z, labels.tolist(), tau)[-2:]), abs=1e-5)


def test_supcon_without_pairs_is_zero_with_graph():
    z = unit(3, 4).requires_grad_()
    out = supcon(z, torch.tensor([-1, 0, 1]), 0.1)
    assert float(out.detach()) == 0.0 and out.requires_grad
    out.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_moco_margin_matches_loop():
    m = make("moco", margin=0.2, temperature=0.1).eval()  # eval: no shuffle / split, no enqueue
    x = feats(4)
    loss = m(x)[0].detach()
    with torch.no_grad():
        q = F.normalize(m.encoder(x[:, 0]), dim=1).double()
        k = F.normalize(m.key_encoder(x[:, 1]), dim=1).double()
        queue = m.queue.double()
    expected = sum(lse_loss(float(q[i] @ k[i]), [float(q[i] @ n) for n in queue], 0.1, 0.2) for i in range(4)) / 4
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert loss.item() != pytest.approx(float(make("moco", temperature=0.1).eval()(x)[0].detach()), abs=1e-3)


# ---- methods ------------------------------------------------------------------------------
def test_all_methods_listed(capsys):
    listed = list_methods()
    assert set(NEW_METHODS) | {"moco"} <= set(listed)
    assert all(listed[n] for n in NEW_METHODS)  # a one-line description each
    from sslspeaker.commands.train import run

    assert run(argparse.Namespace(list=True)) == 0
    out = capsys.readouterr().out
    assert all(f"  {n} " in out for n in NEW_METHODS)


@pytest.mark.parametrize("name", NEW_METHODS)
def test_forward_backward_finite(name):
    m = make(name)
    views = 3 if name in ("proto", "angproto", "aamsupcon") else 2
    labels = torch.tensor([0, 1, 0, -1, 2, 1])
    loss, logs = m(feats(6, views), labels if m.needs_labels else None)
    assert loss.dim() == 0 and torch.isfinite(loss) and logs["loss"] == pytest.approx(loss.item(), rel=1e-6)
    assert all(math.isfinite(v) for v in logs.values())
    loss.backward()
    trainable = [p for p in m.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)
    assert any(float(p.grad.abs().sum()) > 0 for p in m.encoder.parameters())
    assert m.needs_labels == (name in SUPERVISED)


def test_simclr_loss_is_nt_xent_of_its_embeddings():
    m = make("simclr", temperature=0.1, margin=0.2, projector="mlp", proj_hidden=16, proj_dim=6)
    x = feats(6, views=3)
    loss, logs = m(x)
    z = m.embed(x)
    assert z.shape == (6, 2, 6) and torch.allclose(z.norm(dim=-1), torch.ones(6, 2), atol=1e-5)
    assert loss.item() == pytest.approx(nt_xent(z, 0.1, 0.2, True).item(), abs=1e-6)
    assert make("simclr", symmetric=False)(x)[0].item() == pytest.approx(
        nt_xent(make("simclr").embed(x), 0.07, 0.0, False).item(), abs=1e-6)
    with pytest.raises(ValueError, match="V>=2"):
        m(feats(4, views=1))


@pytest.mark.parametrize("name", ["proto", "angproto"])
def test_prototypical_methods_use_centroid_of_other_segments(name):
    m = make(name)
    x = feats(5, views=4)
    loss, _ = m(x)
    z = encode_views(m.encoder, nn.Identity(), x, normalize=False)
    q, c = z[:, 0], z[:, 1:].mean(dim=1)
    logits = prototypical_logits(q, c) if name == "proto" else angular_prototypical_logits(q, c, m.w, m.b)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.arange(5)).item(), abs=1e-6)


def test_angproto_scale_stays_positive():
    m = make("angproto")
    assert m.w.item() == 10.0 and m.b.item() == -5.0
    for step in range(3):
        loss, logs = m(feats(6, seed=step))
        loss.backward()
        with torch.no_grad():
            m.w -= 1000.0  # a step far past zero
            m.w.grad = None
        m.after_step(step, 3)
        assert m.w.item() > 0 and m.w.item() == pytest.approx(1e-6)  # clamped back to 1e-6 (float32)
    loss, logs = m(feats(6))
    assert torch.isfinite(loss) and logs["scale_w"] > 0


@pytest.mark.parametrize("name", SUPERVISED)
def test_supervised_methods_need_labels(name):
    m = make(name)
    with pytest.raises(ValueError, match="needs speaker labels"):
        m(feats(4))


@pytest.mark.parametrize("name", ["softmax", "amsoftmax", "aamsoftmax", "aamsupcon"])
def test_classifier_options_checked(name):
    with pytest.raises(ValueError, match="n_classes"):
        build_method(name, TinyEncoder())
    m = make(name)
    with pytest.raises(ValueError, match="n_classes=5"):
        m(feats(3), torch.tensor([0, 5, 1]))


@pytest.mark.parametrize("name", ["amsoftmax", "aamsoftmax"])
def test_margin_classifier_loss_ignores_unlabelled_rows(name):
    m = make(name, margin=0.25, scale=16.0)
    x = feats(4, views=2)
    labels = torch.tensor([3, -1, 0, 3])
    loss, logs = m(x, labels)
    emb = encode_views(m.encoder, nn.Identity(), x, normalize=False).flatten(0, 1)
    y = labels.repeat_interleave(2)
    keep = y >= 0
    cos = F.normalize(emb[keep], dim=1) @ F.normalize(m.weight, dim=1).t()
    fn = am_softmax_logits if name == "amsoftmax" else aam_softmax_logits
    assert loss.item() == pytest.approx(F.cross_entropy(fn(cos, y[keep], 0.25, 16.0), y[keep]).item(), abs=1e-5)
    assert logs["labelled"] == 6

    zero, _ = m(x, torch.full((4,), -1))
    assert zero.item() == 0.0
    zero.backward()
    assert all(p.grad is not None for p in m.parameters())


def test_aamsupcon_is_supcon_plus_aam():
    m = make("aamsupcon", temperature=0.2)
    x = feats(4, views=3)
    labels = torch.tensor([1, 0, 1, -1])
    loss, logs = m(x, labels)
    emb = encode_views(m.encoder, nn.Identity(), x, normalize=False).flatten(0, 1)
    y = labels.repeat_interleave(3)
    keep = y >= 0
    cos = F.normalize(emb[keep], dim=1) @ F.normalize(m.weight, dim=1).t()
    aam = F.cross_entropy(aam_softmax_logits(cos, y[keep], 0.3, 32.0), y[keep])
    sc = supcon(F.normalize(emb, dim=1), y, 0.2)
    assert loss.item() == pytest.approx((aam + sc).item(), abs=1e-5)
    assert logs["supcon"] == pytest.approx(sc.item(), abs=1e-5) and logs["aam"] == pytest.approx(aam.item(), abs=1e-5)


def test_moco_supcon_is_info_nce_plus_weighted_supcon():
    m = make("moco_supcon", supcon_weight=0.5, supcon_temperature=0.2).eval()
    x, labels = feats(6), torch.tensor([0, -1, 1, 0, -1, 2])
    loss, logs = m(x, labels)
    with torch.no_grad():
        q = m.encode_queries(x[:, 0])
        k, _ = m.encode_keys(x[:, 1])
    nce = info_nce(q, k, m.queue, 0.07)
    sc = supcon(torch.cat([q, k]), labels.repeat(2), 0.2)
    assert loss.item() == pytest.approx((nce + 0.5 * sc).item(), abs=1e-5)
    assert logs["labelled"] == pytest.approx(4 / 6)

    train = make("moco_supcon", queue_size=32)
    loss, _ = train(x, labels)
    loss.backward()
    assert int(train.queue_ptr) == 6 and all(p.grad is None for p in train.key_encoder.parameters())
    with pytest.raises(ValueError, match="supcon_weght"):
        build_method("moco_supcon", TinyEncoder(), supcon_weght=1.0)


# ---- DDP: gathered negatives carry gradients ------------------------------------------------
def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        result = {}
        for key, name, options in CASES:
            m = make(name, **options)
            x = feats(4, views=3 if name == "aamsupcon" else 2, seed=10 + rank)
            loss, _ = m(x, LABELS[rank] if m.needs_labels else None)
            loss.backward()
            result[key] = {"loss": loss.detach(), "grads": [p.grad.clone() for p in m.parameters()]}
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


CASES = [("sym_am", "simclr", {"margin": 0.2, "temperature": 0.1}),
         ("asym", "simclr", {"symmetric": False}),
         ("aamsupcon", "aamsupcon", {}),
         ("gated", "aamsoftmax", {"gate_fraction": 0.3})]  # one gate over the ranks' 10 labelled rows
LABELS = [torch.tensor([0, 1, -1, 2]), torch.tensor([1, -1, -1, 3])]  # uneven labelled counts per rank


def _single_process_loss(key: str, name: str, options: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The same objective over the concatenated batch, each rank's shard encoded on its own (its BN batch)."""
    m = make(name, **options)
    xs = [feats(4, views=3 if name == "aamsupcon" else 2, seed=10 + r) for r in range(2)]
    if name == "simclr":
        z = torch.cat([m.embed(x) for x in xs])
        loss = nt_xent(z, m.temperature, m.margin, m.symmetric)
    elif name == "aamsoftmax":  # the 7 lowest of the 10 labelled rows' losses: ⌊0.3 · 10⌋ left out
        emb = torch.cat([encode_views(m.encoder, nn.Identity(), x, normalize=False).flatten(0, 1) for x in xs])
        y = torch.cat([lab.repeat_interleave(2) for lab in LABELS])
        keep = y >= 0
        cos = F.normalize(emb[keep], dim=1) @ F.normalize(m.weight, dim=1).t()
        losses = F.cross_entropy(aam_softmax_logits(cos, y[keep], m.margin, m.scale), y[keep], reduction="none")
        loss = losses.sort().values[:7].mean()
    else:
        emb = torch.cat([encode_views(m.encoder, nn.Identity(), x, normalize=False).flatten(0, 1) for x in xs])
        y = torch.cat([lab.repeat_interleave(3) for lab in LABELS])
        keep = y >= 0
        cos = F.normalize(emb[keep], dim=1) @ F.normalize(m.weight, dim=1).t()
        loss = (F.cross_entropy(aam_softmax_logits(cos, y[keep], m.margin, m.scale), y[keep])
                + supcon(F.normalize(emb, dim=1), y, m.temperature))
    loss.backward()
    return loss.detach(), [p.grad for p in m.parameters()]


def test_ddp_gradients_equal_single_process_over_concatenated_batch(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for key, name, options in CASES:
        loss, grads = _single_process_loss(key, name, options)
        # DDP averages the ranks' gradients; the mean of the rank losses is the global loss
        assert float(sum(r[key]["loss"] for r in ranks) / 2) == pytest.approx(loss.item(), abs=1e-5), key
        for g, g0, g1 in zip(grads, ranks[0][key]["grads"], ranks[1][key]["grads"]):
            assert torch.allclose((g0 + g1) / 2, g, atol=1e-5, rtol=1e-4), key
        # the cross-rank terms matter: a rank's own gradient is not the global one
        assert not all(torch.allclose(g0, g, atol=1e-4) for g, g0 in zip(grads, ranks[0][key]["grads"]))


# ---- recipes ------------------------------------------------------------------------------
RECIPES = {
    "simclr_voxceleb2": "simclr", "simclr_am_sym_voxceleb2": "simclr", "simclr_am_sym_voxceleb1": "simclr",
    "proto_voxceleb1": "proto", "angproto_voxceleb1": "angproto", "aamsoftmax_voxceleb1": "aamsoftmax",
    "aamsupcon_voxceleb1": "aamsupcon", "moco_supcon_voxceleb1": "moco_supcon",
    "simclr_speechocean762": "simclr", "simclr_am_sym_speechocean762": "simclr",
    "proto_speechocean762": "proto", "angproto_speechocean762": "angproto",
    "aamsoftmax_speechocean762": "aamsoftmax", "aamsupcon_speechocean762": "aamsupcon",
    "softmax_speechocean762": "softmax",
    "moco_supcon_speechocean762": "moco_supcon", "moco_noaug_speechocean762": "moco",
    "ssps_simclr_speechocean762": "simclr", "ssps_moco_speechocean762": "moco", "ssps_simclr_voxceleb2": "simclr",
}


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_loads_and_builds(recipe, tmp_path, monkeypatch):
    from sslspeaker.config import load_config
    from sslspeaker.training.build import build_model

    monkeypatch.setenv("SSLSPEAKER_DATA", str(tmp_path))  # paths only expand; no dataset is built
    cfg = load_config(CONFIGS / f"{recipe}.yaml", ["model.encoder=fast_resnet34"])
    assert cfg.method.name == RECIPES[recipe]
    assert all(str(tmp_path) in ref.manifest for ref in cfg.data.train)
    method = build_model(cfg)
    assert type(method).__name__ and method.needs_labels == (RECIPES[recipe] in SUPERVISED)
    assert cfg.data.n_views >= (1 if RECIPES[recipe] in ("aamsoftmax", "softmax") else 2)
    if RECIPES[recipe] == "moco_supcon":
        assert cfg.data.labelled_fraction == 0.15
    if "am_sym" in recipe:
        assert method.symmetric and method.margin > 0
    if recipe.startswith("ssps_"):
        assert method.ssps is not None and method.wants == ("index",)
    # the no-augmentation variant changes nothing else of its base (the N|R development recipe)
    if recipe == "moco_noaug_speechocean762":
        base = load_config(CONFIGS / "moco_speechocean762.yaml", ["model.encoder=fast_resnet34"])
        assert (cfg.augment.mode, base.augment.mode) == ("none", "N|R")
        assert (cfg.method, cfg.optim, cfg.data, cfg.train) == (base.method, base.optim, base.data, base.train)


def test_positive_top1_adds_the_margin_back_and_skips_masked_negatives():
    tau, m = 0.1, 0.2
    cos = torch.tensor([[0.5, 0.4, 0.1],      # positive (col 0) beats 0.4 by cosine, not after the margin
                        [0.3, 0.35, -1.0],    # a negative outscores the positive
                        [0.45, 0.9, 0.2]])    # the positive is column 2 (0.2); column 0 (0.45) outscores it
    target = torch.tensor([0, 0, 2])
    logits = cos / tau
    logits[torch.arange(3), target] -= m / tau
    logits[2, 1] = -torch.inf                 # masked (own key): not a competitor
    assert (logits.argmax(dim=1) == target).float().mean() == 0.0  # what the margin-adjusted argmax reported
    # row 0: 0.5 > 0.4 yes; row 1: 0.3 < 0.35 no; row 2: 0.2 < 0.45 (column 1 masked) no
    assert float(positive_top1(logits, target, m, tau)) == pytest.approx(1 / 3)
    logits[2, 0] = -torch.inf                 # with column 0 masked as well, nothing outscores row 2's positive
    assert float(positive_top1(logits, target, m, tau)) == pytest.approx(2 / 3)


# ---- options -------------------------------------------------------------------------------
def test_options_extend_the_parent_and_are_read_strictly():
    from sslspeaker.config import ConfigError
    from sslspeaker.methods import method_options

    moco = [o.name for o in method_options("moco")]
    for child in ("c3_moco", "moco_supcon"):
        names = [o.name for o in method_options(child)]
        assert names[:len(moco)] == moco and len(names) > len(moco)  # the parent's options first, then its own
    listed = {o.name: o for o in method_options("moco")}
    assert listed["queue_size"].default == 65536 and listed["queue_size"].help
    assert all(o.help for name in list_methods() for o in method_options(name))  # one line of help each
    with pytest.raises(ConfigError, match=r"moco\.queue_size: expected an integer"):
        build_method("moco", TinyEncoder(), queue_size="big")
    with pytest.raises(ConfigError, match=r"unknown option moco_supcon\.supcon_weght; known: .*supcon_weight"):
        build_method("moco_supcon", TinyEncoder(), supcon_weght=1.0)
    m = build_method("c3_moco", TinyEncoder(), queue_size=16, n_clusters=[3, 4], proto_start_epoch=20)
    assert m.options.n_clusters == [3, 4] and m.options.queue_size == 16 and m.queue.shape[0] == 16


def test_train_list_prints_each_methods_options(capsys):
    from sslspeaker.commands.train import run

    assert run(argparse.Namespace(list=True)) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.strip().startswith("queue_size"))
    assert "65536" in line and "FIFO queue" in line
    assert any(row.strip().startswith("supcon_weight") for row in out.splitlines())


def test_fit_options_to_pool_caps_the_moco_queue_at_an_epoch_of_keys():
    from sslspeaker.methods import fit_options_to_pool

    given = {"queue_size": 65536, "temperature": 0.1}
    fitted = fit_options_to_pool("moco", given, 100, 16)
    assert fitted == {"queue_size": 96, "temperature": 0.1} and given["queue_size"] == 65536  # 100 // 16 · 16
    assert fit_options_to_pool("moco", {}, 100, 16) == {"queue_size": 96}  # the default 65536 is capped too
    assert fit_options_to_pool("moco", {"queue_size": 32}, 100, 16) == {"queue_size": 32}
    assert fit_options_to_pool("moco", {"symmetric": True}, 100, 16)["queue_size"] == 192  # two keys per utterance
    assert fit_options_to_pool("c3_moco", {"queue_size": 1000}, 50, 10) == {"queue_size": 50}
    assert fit_options_to_pool("simclr", {"temperature": 0.1}, 100, 16) == {"temperature": 0.1}
    # the cap is what the trainer's clamp_queue would leave: no warning, the same queue
    m = make("moco", queue_size=fit_options_to_pool("moco", {}, 100, 16)["queue_size"])
    assert m.clamp_queue(100, 16) == 96


def test_developers_guide_example_method_builds_and_trains():
    """The "How to add a method" file in DEVELOPERS.md, run as written."""
    import re
    import sys
    import types

    text = (Path(__file__).resolve().parents[1] / "DEVELOPERS.md").read_text()
    source = re.search(r"## How to add a method.*?```python\n(.*?)```", text, re.S).group(1)
    module = types.ModuleType("moco_align_example")
    sys.modules[module.__name__] = module
    exec(compile(source, "DEVELOPERS.md", "exec"), module.__dict__)
    torch.manual_seed(0)
    m = build_method("moco_align", TinyEncoder(), queue_size=32, align_weight=0.25)
    x = feats(6)
    with torch.no_grad():
        q = m.encode_queries(x[:, 0])
        k, _ = m.encode_keys(x[:, 1])
        queue = m.queue.clone()
    m.shuffle_count.zero_()  # the same key shuffle again in the forward
    loss, logs = m(x)
    expected = info_nce(q, k, queue, 0.07) + 0.25 * ((q - k) ** 2).sum(dim=1).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5) and logs["loss"] == pytest.approx(loss.item())
    loss.backward()
    assert int(m.queue_ptr) == 6 and any(float(p.grad.abs().sum()) > 0 for p in m.encoder.parameters())
    from sslspeaker.methods import method_options

    assert "align_weight" in [o.name for o in method_options("moco_align")]


def test_cnceleb_recipe_loads_and_builds(tmp_path, monkeypatch):
    from sslspeaker.config import load_config
    from sslspeaker.training.build import build_model

    monkeypatch.setenv("SSLSPEAKER_DATA", str(tmp_path))
    cfg = load_config(CONFIGS / "aamsupcon_cnceleb.yaml", ["method.options.n_classes=2793"])
    assert cfg.data.train[0].manifest == str(tmp_path / "cnceleb" / "train.csv") and cfg.validation.trials is None
    m = build_model(cfg)
    assert type(m).__name__ == "AAMSupCon" and m.weight.shape == (2793, 192) and m.options.margin == 0.3
