"""DINO and C3-MoCo: equations against direct loops, schedules, state, clustering, recipes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import torch.nn.functional as F
from torch import nn

from conftest import TinyEncoder
from sslspeaker.methods import EpochContext, build_method
from sslspeaker.methods import c3 as c3_module  # noqa: F401  (registers "c3_moco")
from sslspeaker.methods.c3 import NEVER as C3_NEVER
from sslspeaker.methods import dino as dino_module  # noqa: F401  (registers "dino")
from sslspeaker.methods.c3 import (C3MoCo, false_negative_mask, false_negative_pairs, proto_nce,
                                   reweighted_info_nce)
from sslspeaker.methods.clustering import concentration, kmeans
from sslspeaker.methods.dino import (DINO, center_update, dino_cross_entropy, teacher_momentum,
                                     teacher_temperature)

N_MELS, FRAMES, LOCAL_FRAMES, DIM = 6, 10, 7, 8
CONFIGS = Path(__file__).resolve().parents[1] / "configs"




def feats(batch: int, views: int = 2, frames: int = FRAMES, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, views, N_MELS, frames, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sgd_step(method: nn.Module, lr: float) -> None:
    for p in method.parameters():
        if p.grad is not None:
            p -= lr * p.grad
            p.grad = None


# =============================== DINO ======================================================
def ended(epoch: int) -> EpochContext:
    """The end of ``epoch`` in a long run, without a training set to embed."""
    return EpochContext(epoch=epoch, planned_epochs=100, step=0, steps_per_epoch=1, total_steps=100,
                        device=torch.device("cpu"))


def make_dino(seed: int = 0, **options) -> DINO:
    torch.manual_seed(seed)
    return DINO(TinyEncoder(), **{"out_dim": 16, "hidden_dim": 12, "bottleneck_dim": 6, **options})


def views_first(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x[:, v] for v in range(x.shape[1])])


def loop_dino(student: torch.Tensor, teacher: torch.Tensor, center, tau_t: float, tau_s: float):
    """Direct loop: mean over (t, s ≠ t) of mean_b −Σ_k p_t log p_s; also mean H(p_t) and mean KL(p_t‖p_s)."""
    student, teacher, center = student.double(), teacher.double(), center.double().flatten()
    S, B, K = student.shape
    T = teacher.shape[0]
    ce_terms, kl_terms, ent = [], [], []
    for t in range(T):
        for b in range(B):
            p_t = torch.softmax((teacher[t, b] - center) / tau_t, dim=0)
            ent.append(-sum(float(p_t[k]) * math.log(float(p_t[k])) for k in range(K)))
    for t in range(T):
        for s in range(S):
            if s == t:
                continue
            ce_b, kl_b = [], []
            for b in range(B):
                p_t = torch.softmax((teacher[t, b] - center) / tau_t, dim=0)
                log_p_s = torch.log_softmax(student[s, b] / tau_s, dim=0)
                ce_b.append(-sum(float(p_t[k]) * float(log_p_s[k]) for k in range(K)))
                kl_b.append(sum(float(p_t[k]) * (math.log(float(p_t[k])) - float(log_p_s[k])) for k in range(K)))
            ce_terms.append(sum(ce_b) / B)
            kl_terms.append(sum(kl_b) / B)
    return sum(ce_terms) / len(ce_terms), sum(ent) / len(ent), sum(kl_terms) / len(kl_terms)


@pytest.mark.parametrize("n_student", [2, 6])
def test_dino_cross_entropy_matches_pair_loop(n_student):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(n_student, 3, 5, generator=g)
    t = torch.randn(2, 3, 5, generator=g)
    center = 0.3 * torch.randn(1, 5, generator=g)
    expected, _, _ = loop_dino(s, t, center, 0.05, 0.1)
    assert float(dino_cross_entropy(s, t, center, 0.05, 0.1)) == pytest.approx(expected, abs=1e-5)


def test_dino_forward_matches_loop_with_center_and_temperatures():
    m = make_dino(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=4, student_temp=0.1)
    m.center.copy_(0.2 * torch.randn(1, 16, generator=torch.Generator().manual_seed(3)))
    m.epoch.fill_(2)  # τ_t = 0.04 + 0.03 · 2/3
    x, loc = feats(4), feats(4, views=4, frames=LOCAL_FRAMES, seed=2)
    with torch.no_grad():  # same BN groups as the method: globals together, locals together
        s = torch.cat([m.head(m.encoder(views_first(x))), m.head(m.encoder(views_first(loc)))]).reshape(6, 4, 16)
        t = m.key_head(m.key_encoder(views_first(x))).reshape(2, 4, 16)
    center = m.center.clone()
    loss, logs = m(x, None, local_feats=loc)
    tau_t = 0.04 + 0.03 * 2 / 3
    expected, ent, kl = loop_dino(s, t, center, tau_t, 0.1)
    assert loss.item() == pytest.approx(expected, abs=1e-5)
    assert logs["teacher_temp"] == pytest.approx(tau_t)
    assert logs["teacher_entropy"] == pytest.approx(ent, abs=1e-5)
    assert logs["kl"] == pytest.approx(kl, abs=1e-5)
    with torch.no_grad():
        z = F.normalize(m.encoder(views_first(x)), dim=1)
    assert logs["embed_std"] == pytest.approx(float(z.std(dim=0).mean()), abs=1e-6)
    assert set(logs) == {"loss", "teacher_entropy", "kl", "embed_std", "teacher_temp", "momentum"}


def test_dino_center_update():
    c, mean = torch.randn(1, 5), torch.randn(5)
    assert torch.allclose(center_update(c, mean, 0.99), 0.99 * c + 0.01 * mean[None])
    m = make_dino(center_momentum=0.9)
    m.center.copy_(torch.randn(1, 16))
    c0 = m.center.clone()
    x = feats(4)
    with torch.no_grad():
        t = m.key_head(m.key_encoder(views_first(x)))
    m(x, None, local_feats=feats(4, views=2, frames=LOCAL_FRAMES))
    assert torch.allclose(m.center, 0.9 * c0 + 0.1 * t.mean(dim=0, keepdim=True), atol=1e-6)
    m.eval()
    c1 = m.center.clone()
    m(x)
    assert torch.equal(m.center, c1)  # eval: no centering update


def test_teacher_momentum_schedule_and_update():
    assert teacher_momentum(0, 100) == pytest.approx(0.996)
    assert teacher_momentum(50, 100) == pytest.approx(0.998)
    assert teacher_momentum(100, 100) == pytest.approx(1.0)
    assert teacher_momentum(25, 100) == pytest.approx(1 - 0.004 * (1 + math.cos(math.pi / 4)) / 2)
    m = make_dino()
    loss, _ = m(feats(4), None, local_feats=feats(4, 2, LOCAL_FRAMES))
    loss.backward()
    sgd_step(m, 0.5)
    teacher = [p.clone() for p in [*m.key_encoder.parameters(), *m.key_head.parameters()]]
    student = [*m.encoder.parameters(), *m.head.parameters()]
    m.after_step(50, 100)
    for new, old, s in zip([*m.key_encoder.parameters(), *m.key_head.parameters()], teacher, student):
        assert torch.allclose(new, 0.998 * old + 0.002 * s, atol=1e-6)
    assert float(m.momentum_now) == pytest.approx(0.998)
    assert all(p.grad is None and not p.requires_grad for p in m.key_head.parameters())


def test_teacher_temperature_warmup():
    assert teacher_temperature(0, 0.04, 0.07, 30) == pytest.approx(0.04)
    assert teacher_temperature(15, 0.04, 0.07, 30) == pytest.approx(0.04 + 0.03 * 15 / 29)
    assert teacher_temperature(29, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert teacher_temperature(30, 0.04, 0.07, 30) == pytest.approx(0.07)
    assert teacher_temperature(0, 0.04, 0.07, 0) == pytest.approx(0.07)
    assert teacher_temperature(0, 0.04, 0.07, 1) == pytest.approx(0.04)
    m = make_dino(warmup_teacher_temp_epochs=3)
    temps = []
    for epoch in range(4):
        temps.append(m(feats(4))[1]["teacher_temp"])
        m.on_epoch_end(ended(epoch))
    assert temps == pytest.approx([0.04, 0.055, 0.07, 0.07])


def test_teacher_temperature_warmup_as_a_fraction_follows_the_plan():
    m = make_dino(warmup_teacher_temp_epochs=30, warmup_teacher_temp_fraction=0.2)
    m.on_schedule(26)  # round(0.2 x 26) = 5 warm-up epochs, whatever the epoch option says
    assert m.warmup_teacher_temp_epochs == 5
    m.on_schedule(12)  # re-planned (fit_to_budget): round(2.4) = 2
    temps = []
    for epoch in range(3):
        temps.append(m(feats(4))[1]["teacher_temp"])
        m.on_epoch_end(ended(epoch))
    assert temps == pytest.approx([0.04, 0.07, 0.07])
    m.on_schedule(30)  # a longer re-plan after the warm-up ended keeps it ended (not 6 epochs, 0.058 now)
    assert m.warmup_teacher_temp_epochs == 2 and m(feats(4))[1]["teacher_temp"] == pytest.approx(0.07)
    # the warm-up length travels with the checkpoint; checkpoints from before it was saved still load
    resumed = make_dino(warmup_teacher_temp_epochs=30, warmup_teacher_temp_fraction=0.2)
    resumed.load_state_dict(m.state_dict())
    resumed.on_schedule(30)
    assert resumed.warmup_teacher_temp_epochs == 2
    old = {k: v for k, v in m.state_dict().items() if k != "warmup_epochs"}
    make_dino(warmup_teacher_temp_epochs=30).load_state_dict(old)
    fresh = make_dino(warmup_teacher_temp_epochs=30, warmup_teacher_temp_fraction=0.2)
    fresh.on_schedule(1)  # never below one warm-up epoch
    assert fresh.warmup_teacher_temp_epochs == 1
    with pytest.raises(ValueError, match="warmup_teacher_temp_fraction"):
        make_dino(warmup_teacher_temp_fraction=1.0)


def test_last_layer_frozen_only_in_first_epoch():
    m = make_dino(freeze_last_layer=1)
    last = [p for p in m.head.last_layer.parameters() if p.requires_grad]
    assert len(last) == 1  # norm_last_layer: only the direction v trains, the gain stays 1

    def grads():
        for p in m.parameters():
            p.grad = None
        m(feats(4), None, local_feats=feats(4, 2, LOCAL_FRAMES))[0].backward()
        m.before_optimizer_step()
        return last[0].grad, [p.grad for p in m.head.mlp.parameters()]

    g_last, g_mlp = grads()
    assert g_last is None and all(g is not None and g.abs().sum() > 0 for g in g_mlp)  # unset, not zero
    m.on_epoch_end(ended(0))
    g_last, _ = grads()
    assert g_last is not None and g_last.abs().sum() > 0
    m0 = make_dino(freeze_last_layer=0)
    m0(feats(4))[0].backward()
    m0.before_optimizer_step()
    assert m0.head.last_layer.parametrizations.weight.original1.grad.abs().sum() > 0


def test_frozen_last_layer_is_not_moved_by_momentum_or_weight_decay():
    """SGD with momentum and weight decay over a frozen step after a trained one: a zero gradient would
    still move the layer (momentum buffer, decay); an unset one leaves it exactly where it was."""
    m = make_dino(freeze_last_layer=1)
    m.epoch.fill_(1)  # a trained step first, so that the momentum buffer holds something
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    m(feats(4))[0].backward()
    m.before_optimizer_step()
    opt.step()
    m.epoch.fill_(0)  # now frozen
    before = m.head.last_layer.parametrizations.weight.original1.detach().clone()
    opt.zero_grad(set_to_none=True)
    m(feats(4, seed=2))[0].backward()
    m.before_optimizer_step()
    opt.step()
    assert torch.equal(m.head.last_layer.parametrizations.weight.original1, before)
    mlp_before = [p.detach().clone() for p in m.head.mlp.parameters()]
    assert mlp_before  # and the rest of the head still trains in the frozen epoch
    m(feats(4, seed=3))[0].backward()
    m.before_optimizer_step()
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(mlp_before, m.head.mlp.parameters()))


def test_center_init_zero_or_random():
    assert torch.equal(make_dino().center, torch.zeros(1, 16))
    torch.manual_seed(0)
    c = DINO(TinyEncoder(), out_dim=20000, hidden_dim=12, bottleneck_dim=64, center_init="random").center
    assert c.shape == (1, 20000)
    assert float(c.mean()) == pytest.approx(0.0, abs=0.005) and float(c.std()) == pytest.approx(1 / 8, rel=0.03)
    with pytest.raises(ValueError, match="center_init"):
        make_dino(center_init="ones")


def test_inference_encoder_is_the_teacher_unless_student_is_asked():
    m = make_dino()
    assert m.inference_encoder_name() == "key_encoder" and m.inference_encoder() is m.key_encoder
    s = make_dino(inference_encoder="student")
    assert s.inference_encoder_name() == "encoder" and s.inference_encoder() is s.encoder
    with pytest.raises(ValueError, match="inference_encoder"):
        make_dino(inference_encoder="both")


def test_dino_state_dict_round_trip():
    a = make_dino(seed=0)
    for step in range(2):
        loss, _ = a(feats(4, seed=step), None, local_feats=feats(4, 2, LOCAL_FRAMES, seed=10 + step))
        loss.backward()
        sgd_step(a, 0.1)
        a.after_step(step, 10)
    a.on_epoch_end(ended(0))
    b = make_dino(seed=5)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.center, b.center) and int(b.epoch) == 1 and float(b.momentum_now) == float(a.momentum_now)
    x, loc = feats(4, seed=9), feats(4, 2, LOCAL_FRAMES, seed=8)
    la, logs_a = a(x, None, local_feats=loc)
    lb, logs_b = b(x, None, local_feats=loc)
    assert torch.equal(la, lb) and logs_a == logs_b and torch.equal(a.center, b.center)


def test_dino_bf16_autocast_keeps_float32():
    m = make_dino()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = m(feats(4), None, local_feats=feats(4, 2, LOCAL_FRAMES))
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and m.center.dtype == torch.float32
    assert all(math.isfinite(v) for v in logs.values())


def test_dino_registry_and_views():
    m = build_method("dino", TinyEncoder(), out_dim=16, hidden_dim=12, bottleneck_dim=6, head_bn=True)
    assert isinstance(m, DINO) and m.wants == ("local_feats",) and m.inference_encoder() is m.key_encoder
    loss, _ = m(feats(4, views=2))  # no local views: the two global views teach each other
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="two views"):
        m(feats(4, views=1))
    with pytest.raises(ValueError, match="teacher_tmp"):
        build_method("dino", TinyEncoder(), teacher_tmp=0.04)


def _dino_ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        m = make_dino(seed=0, center_momentum=0.5)
        m(feats(4, seed=20 + rank))
        torch.save({"center": m.center}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_dino_center_uses_all_ranks(tmp_path):
    import torch.multiprocessing as mp

    # fork: no re-import of torch in the children (spawn costs ~15 s on a loaded 2-core machine)
    mp.start_processes(_dino_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    c0, c1 = (torch.load(tmp_path / f"rank{r}.pt")["center"] for r in range(2))
    m = make_dino(seed=0)
    with torch.no_grad():
        t = torch.cat([m.key_head(m.key_encoder(views_first(feats(4, seed=20 + r)))) for r in range(2)])
    assert torch.equal(c0, c1)
    assert torch.allclose(c0, 0.5 * t.mean(dim=0, keepdim=True), atol=1e-6)


# =============================== C3-MoCo ===================================================
def make_c3(seed: int = 0, **options) -> C3MoCo:
    torch.manual_seed(seed)
    return C3MoCo(TinyEncoder(), seed=seed, **{"queue_size": 32, **options})


def hand_case():
    """Anchors q_i = e_i; k⁺_i and queue keys set so that q_i·k⁺_i = pos_i and q_i·queue_i = neg_i
    (every other product 0); a slack coordinate keeps every row unit-norm."""
    pos = [0.9, 0.9, 0.5, 0.4, 0.45, -0.2]
    neg = [0.75, 0.7, 0.4, 0.39, 0.37, 0.9]
    # 0: 0.75 > 0.72, pos 0.9 > 0.4         → flagged
    # 1: 0.70 < 0.72                         → not
    # 2: 0.40 = 0.8 · 0.5 exactly (strict >) → not
    # 3: pos 0.4 = threshold exactly (strict >), although 0.39 > 0.32 → not
    # 4: 0.37 > 0.36, pos 0.45 > 0.4        → flagged
    # 5: negative positive similarity        → not
    n = len(pos)
    q = torch.eye(n, n + 1)

    def unit_rows(m: torch.Tensor) -> torch.Tensor:
        m[:, n] = (1 - (m[:, :n] ** 2).sum(dim=1)).clamp_min(0).sqrt()
        return m

    k_pos = unit_rows(torch.cat([torch.diag(torch.tensor(pos)), torch.zeros(n, 1)], dim=1))
    queue = unit_rows(torch.cat([torch.diag(torch.tensor(neg)), torch.zeros(n, 1)], dim=1))
    return q, k_pos, queue, torch.tensor([True, False, False, False, True, False])


def test_false_negative_mask_hand_cases():
    q, k_pos, queue, expected = hand_case()
    assert torch.equal(false_negative_mask(q, k_pos, queue, 0.8, 0.4), expected)
    pairs = false_negative_pairs((q * k_pos).sum(1), q @ queue.t(), 0.8, 0.4)
    assert pairs.shape == (6, 6) and torch.equal(pairs, torch.diag(expected))
    # thresholds are options: with a looser ratio anchor 1 and 2 join, with min_pos 0.35 anchor 3 too
    assert false_negative_mask(q, k_pos, queue, 0.75, 0.4).tolist() == [True, True, True, False, True, False]
    assert false_negative_mask(q, k_pos, queue, 0.8, 0.35).tolist() == [True, False, False, True, True, False]


def info_nce_terms(q, k_pos, queue, tau, exclude=None):
    """Per-anchor −log e^(q·k⁺/τ) / (e^(q·k⁺/τ) + Σ_j e^(q·k_j/τ)), skipping excluded (i, j) pairs."""
    out = []
    for i in range(q.shape[0]):
        s_pos = float(q[i] @ k_pos[i]) / tau
        negs = [float(q[i] @ queue[j]) / tau for j in range(queue.shape[0])
                if exclude is None or not bool(exclude[i, j])]
        out.append(-(s_pos - math.log(math.exp(s_pos) + sum(math.exp(s) for s in negs))))
    return out


@pytest.mark.parametrize("filtered", [False, True])
def test_reweighted_info_nce_equals_weighted_sum(filtered):
    q, k_pos, queue, flagged = hand_case()
    g = torch.Generator().manual_seed(0)
    queue = torch.cat([queue, F.normalize(torch.randn(5, q.shape[1], generator=g), dim=1)])  # more negatives
    flagged = false_negative_mask(q, k_pos, queue, 0.8, 0.4)
    assert flagged.any() and not flagged.all()
    pairs = false_negative_pairs((q * k_pos).sum(1), q @ queue.t(), 0.8, 0.4) if filtered else None
    ell = info_nce_terms(q, k_pos, queue, 0.07, pairs)
    w1, w2, n = 1.0, 0.3, q.shape[0]
    l_tn = sum(e for e, f in zip(ell, flagged) if not f) / n
    l_fn = sum(e for e, f in zip(ell, flagged) if f) / n
    expected = w1 * l_tn + w2 * l_fn
    assert float(reweighted_info_nce(torch.tensor(ell), flagged, w1, w2)) == pytest.approx(expected, rel=1e-6)
    m = make_c3(tn_weight=w1, fn_weight=w2, filter_false_negatives=filtered)
    loss, stats = m._c3_contrast(q, k_pos, queue, reweight=True)
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    assert float(stats[3]) == pytest.approx(float(flagged.float().mean()))
    plain, _ = m._c3_contrast(q, k_pos, queue, reweight=False)
    assert float(plain) == pytest.approx(sum(info_nce_terms(q, k_pos, queue, 0.07)) / n, abs=1e-5)


@pytest.mark.parametrize("reweight", [False, True])
def test_c3_own_utterance_keys_are_neither_negatives_nor_flagged(reweight):
    q, k_pos, queue, _ = hand_case()
    m = make_c3(fn_weight=0.3)
    own = torch.zeros(q.shape[0], queue.shape[0], dtype=torch.bool)
    own[:, 0] = True  # queued key 0 is every anchor's own utterance: as if it were not queued
    loss, stats = m._c3_contrast(q, k_pos, queue, reweight=reweight, own=own)
    ref, ref_stats = m._c3_contrast(q, k_pos, queue[1:], reweight=reweight)
    assert float(loss) == pytest.approx(float(ref), abs=1e-6) and float(stats[3]) == float(ref_stats[3])


def test_proto_nce_matches_loop():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(4, 3, generator=g), dim=1)
    protos = F.normalize(torch.randn(5, 3, generator=g), dim=1)
    phi = 0.05 + 0.2 * torch.rand(5, generator=g)
    assign = torch.tensor([0, 3, 3, 1])
    expected = 0.0
    for i in range(4):
        logits = [float(q[i] @ protos[j]) / float(phi[j]) for j in range(5)]
        expected += -(logits[int(assign[i])] - math.log(sum(math.exp(v) for v in logits))) / 4
    assert float(proto_nce(q, assign, protos, phi)) == pytest.approx(expected, abs=1e-5)

    # the method averages over its clusterings, looking each item up by dataset index
    m = make_c3(n_clusters=[5, 2], proto_start_epoch=20)
    assign2, protos2, phi2 = torch.tensor([1, 0, 1, 1, 0, 0]), F.normalize(torch.randn(2, 3, generator=g), dim=1), \
        torch.tensor([0.1, 0.2])
    m.proto_assign_0, m.proto_centroids_0, m.proto_phi_0 = torch.tensor([9, 0, 3, 9, 1, 3]), protos, phi
    m.proto_assign_1, m.proto_centroids_1, m.proto_phi_1 = assign2, protos2, phi2
    index = torch.tensor([1, 5, 2, 4])  # → clustering 0: [0, 3, 3, 1]
    second = proto_nce(q, assign2[index], protos2, phi2)
    assert float(m._proto(q, index)) == pytest.approx((expected + float(second)) / 2, abs=1e-5)


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_kmeans_recovers_separated_blobs(backend):
    g = torch.Generator().manual_seed(0)
    centres = 5 * torch.randn(8, 16, generator=g)
    truth = torch.arange(400) % 8
    x = centres[truth] + 0.3 * torch.randn(400, 16, generator=g)
    c, a = kmeans(x, 8, seed=1, backend=backend)
    assert c.shape == (8, 16) and a.shape == (400,) and a.dtype == torch.long
    for j in range(8):  # every blob is one cluster, and the clusters are distinct
        assert len(set(a[truth == j].tolist())) == 1
    assert len(set(a.tolist())) == 8
    for cl in range(8):  # Lloyd ends at the means; mini-batch k-means near them
        assert torch.allclose(c[cl], x[a == cl].mean(dim=0), atol=1e-4 if backend == "torch" else 0.1)
    c2, a2 = kmeans(x, 8, seed=1, backend=backend)
    assert torch.equal(a, a2) and torch.equal(c, c2)  # seeded: reproducible


def test_kmeans_rejects_bad_k():
    with pytest.raises(ValueError, match="k"):
        kmeans(torch.randn(5, 3), 6)


def test_concentration_matches_pcl_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=g)
    assign = torch.tensor([0] * 10 + [1] * 15 + [2] * 7 + [3] * 7 + [4])  # cluster 4: a single point
    c = torch.stack([x[assign == j].mean(0) for j in range(5)]) + 0.01
    raw = np.zeros(5)
    for j in range(5):
        members = x[assign == j].numpy()
        if len(members) > 1:
            raw[j] = np.linalg.norm(members - c[j].numpy(), axis=1).sum() / (len(members) * np.log(len(members) + 10))
    raw[4] = raw[:4].max()
    assert np.allclose(concentration(x, c, assign, clip_percentiles=None).numpy(), raw, atol=1e-5)
    clipped = raw.clip(np.percentile(raw, 10), np.percentile(raw, 90))
    expected = 0.2 * clipped / clipped.mean()
    phi = concentration(x, c, assign, alpha=10.0, temperature=0.2)
    assert np.allclose(phi.numpy(), expected, atol=1e-5) and float(phi.mean()) == pytest.approx(0.2, abs=1e-6)


class FakeTrainer:
    """Stand-in for Trainer.embed_training_set: the given encoder over fixed features, L2-normalised."""

    def __init__(self, n: int = 24) -> None:
        self.x = torch.randn(n, N_MELS, FRAMES, generator=torch.Generator().manual_seed(4))
        self.calls: list[nn.Module] = []
        self.steps_per_epoch, self.total_steps = 1, 1000  # far from the run's end unless a test says so

    def context(self, epoch: int) -> EpochContext:
        return EpochContext(epoch=epoch, planned_epochs=self.total_steps // self.steps_per_epoch, step=0,
                            steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps,
                            device=torch.device("cpu"), embed_training_set=self.embed_training_set)

    @torch.no_grad()
    def embed_training_set(self, encoder=None, crop_seconds=None, batch_size=64):
        self.calls.append(encoder)
        was = encoder.training
        encoder.eval()
        out = F.normalize(encoder(self.x), dim=1)
        encoder.train(was)
        return out


def test_on_epoch_end_clusters_momentum_features():
    m = make_c3(n_clusters=[3, 5], proto_start_epoch=1, projector="mlp", proj_hidden=16, proj_dim=6)
    trainer = FakeTrainer(24)
    m.on_epoch_end(trainer.context(0))
    assert len(trainer.calls) == 1
    used = trainer.calls[0]
    assert used[0] is m.key_encoder and used[1] is m.key_projector  # PCL: momentum encoder features
    assert m.proto_assign_0.shape == (24,) and m.proto_assign_1.shape == (24,)
    assert m.proto_centroids_0.shape == (3, 6) and m.proto_centroids_1.shape == (5, 6)
    assert int(m.proto_assign_0.max()) < 3 and int(m.proto_assign_1.max()) < 5
    assert torch.allclose(m.proto_centroids_1.norm(dim=1), torch.ones(5), atol=1e-5)
    assert float(m.proto_phi_1.mean()) == pytest.approx(m.temperature, abs=1e-6)
    assert int(m.proto_epoch) == 0 and m.stage() == 2
    loss, logs = m(feats(8), index=torch.arange(8) * 3)
    assert torch.isfinite(loss) and logs["proto_loss"] > 0 and logs["stage"] == 2.0
    with pytest.raises(ValueError, match="index"):
        m(feats(8))


def test_stage_schedule_switches_at_configured_epochs():
    m = make_c3(n_clusters=[3], reweight_start_epoch=2, proto_start_epoch=4)
    assert [m.stage(e) for e in range(6)] == [0, 0, 1, 1, 2, 2]
    trainer = FakeTrainer(24)
    stages, protos = [], []
    for epoch in range(6):
        _, logs = m(feats(8, seed=epoch), index=torch.arange(8))
        stages.append(logs["stage"])
        protos.append(logs["proto_loss"])
        m.on_epoch_end(trainer.context(epoch))
    assert stages == [0, 0, 1, 1, 2, 2]
    assert protos[:4] == [0, 0, 0, 0] and all(p > 0 for p in protos[4:])
    assert len(trainer.calls) == 3  # clustered at the ends of epochs 3, 4 and 5 only
    trainer.steps_per_epoch, trainer.total_steps = 10, 70
    m.on_epoch_end(trainer.context(6))  # the run's last epoch: nothing left to use prototypes for
    assert len(trainer.calls) == 3 and int(m.epoch) == 7
    # without a ProtoNCE stage configured, stage 2 never starts
    assert make_c3(reweight_start_epoch=1).stage(5) == 1


def test_stage_starts_as_fractions_follow_the_planned_epochs():
    m = make_c3(n_clusters=[3], reweight_start_epoch=50, proto_start_epoch=60,
                reweight_start_fraction=0.25, proto_start_fraction=0.5)
    m.on_schedule(8)
    assert [m.stage(e) for e in range(8)] == [0, 0, 1, 1, 2, 2, 2, 2]
    m.on_schedule(4)  # a slower machine: fit_to_budget re-plans to 4 epochs
    assert (m.reweight_start_epoch, m.proto_start_epoch) == (1, 2)
    assert [m.stage(e) for e in range(4)] == [0, 1, 2, 2]
    m.epoch.fill_(2)  # in ProtoNCE since this epoch; a faster machine re-plans to 10 epochs
    m.on_schedule(10)
    assert (m.reweight_start_epoch, m.proto_start_epoch) == (1, 2)  # entered stages are kept
    m.epoch.fill_(1)  # only the re-weighting stage entered: the ProtoNCE start still follows the plan
    m.on_schedule(10)
    assert (m.reweight_start_epoch, m.proto_start_epoch) == (1, 5)
    with pytest.raises(ValueError, match="proto_start_fraction"):
        make_c3(proto_start_fraction=1.5)


def test_c3_state_dict_round_trip_resizes_prototypes():
    a = make_c3(n_clusters=[3, 4], proto_start_epoch=1)
    a.clamp_queue(24, 8)
    a.on_epoch_end(FakeTrainer(24).context(0))
    b = make_c3(seed=3, n_clusters=[3, 4], reweight_start_epoch=7, proto_start_epoch=9)
    b.load_state_dict(a.state_dict())
    assert (b.reweight_start_epoch, b.proto_start_epoch) == (10, 1)  # the starts (re-plans) travel with it
    for name, buf in a.named_buffers():
        assert torch.equal(buf, dict(b.named_buffers())[name]), name
    x, idx = feats(8, seed=5), torch.arange(8)
    la, logs_a = a(x, index=idx)
    lb, logs_b = b(x, index=idx)
    assert torch.equal(la, lb) and logs_a == logs_b


def test_c3_registry():
    m = build_method("c3_moco", TinyEncoder(), queue_size=16, n_clusters=[3], proto_start_epoch=20, symmetric=True)
    assert isinstance(m, C3MoCo) and m.wants == ("index",)
    loss, logs = m(feats(8))
    assert torch.isfinite(loss) and logs["stage"] == 0.0  # default: InfoNCE until epoch 10
    old = {k: v for k, v in m.state_dict().items() if k != "stage_starts"}  # saved before the starts were
    fresh = build_method("c3_moco", TinyEncoder(), queue_size=16, n_clusters=[3], proto_start_epoch=4)
    fresh.load_state_dict(old)
    assert (fresh.reweight_start_epoch, fresh.proto_start_epoch) == (10, 4)
    with pytest.raises(ValueError, match="unknown option.*n_cluster;"):
        build_method("c3_moco", TinyEncoder(), n_cluster=[3])


def test_protonce_needs_both_a_start_and_clusters():
    """ProtoNCE scheduled without clusters (or clusters without a start) was a silently skipped stage."""
    with pytest.raises(ValueError, match="ProtoNCE stage is scheduled .* n_clusters is empty"):
        make_c3(proto_start_epoch=5)
    with pytest.raises(ValueError, match="ProtoNCE stage is scheduled"):
        make_c3(proto_start_fraction=0.5)
    with pytest.raises(ValueError, match="n_clusters is given but no ProtoNCE start"):
        make_c3(n_clusters=[3])
    plain = make_c3()  # re-weighted InfoNCE only: no ProtoNCE stage at all
    assert plain.stage(10**6) == 1 and plain.proto_start_epoch == C3_NEVER
    assert make_c3(proto_start_epoch=5, proto_weight=0.0).stage(10) == 1  # weight 0: off, said so explicitly


# =============================== recipes ===================================================
RECIPES = ["dino_voxceleb2", "c3_moco_voxceleb2", "c3_dino_voxceleb2", "dino_speechocean762",
           "c3_moco_speechocean762", "c3_dino_speechocean762"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_load_and_build(name, tmp_path, monkeypatch):
    from sslspeaker.config import load_config
    from sslspeaker.models import list_encoders
    from sslspeaker.training.build import build_model

    monkeypatch.setenv("SSLSPEAKER_DATA", str(tmp_path))
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.method.name in ("dino", "c3_moco")
    if cfg.method.name == "dino":
        assert cfg.data.n_local_views == 4 and cfg.data.local_crop_seconds > 0
    if name == "c3_dino_voxceleb2":
        assert cfg.train.init_from == "runs/c3_moco/checkpoints/last.pt"
    if name == "c3_dino_speechocean762":  # stage 2 of a 15 + 15-minute chain on the dev pool
        assert cfg.train.init_from == "runs/dev/c3_moco_stage1/checkpoints/last.pt"
        assert cfg.train.epochs == 13 and cfg.data.local_crop_seconds == 0.5
    if cfg.model.encoder not in list_encoders():
        pytest.skip(f"encoder {cfg.model.encoder!r} is not registered yet (another helper writes it)")
    method = build_model(cfg)
    assert type(method).__name__ == {"dino": "DINO", "c3_moco": "C3MoCo"}[cfg.method.name]


# =============================== with the trainer ==========================================




@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from conftest import write_audio
    from sslspeaker.data.manifest import Entry, write_manifest

    root = tmp_path_factory.mktemp("distill_corpus")
    entries = []
    for i in range(9):
        path = root / f"s{i % 3}" / f"u{i}.wav"
        write_audio(path, seconds=0.6 + 0.1 * i, freq=120 + 40 * i)
        entries.append(Entry(str(path), None, 0.6 + 0.1 * i))
    write_manifest(root / "train.csv", entries)
    return root


def _trainer_cfg(corpus, method: str, options: str, *extra):
    from sslspeaker.config import load_config

    return load_config(None, [
        f"data.train={corpus / 'train.csv'}", "data.crop_seconds=0.5", "data.workers=0",
        "model.encoder=tiny_test", f"method.name={method}", f"method.options={options}",
        "train.batch_size=4", "train.epochs=3", "train.checkpoint_every=1", "train.log_every=1",
        "train.threads=1", "optim.lr=0.05", *extra])


CASES = {
    "dino": ("{out_dim: 32, hidden_dim: 16, bottleneck_dim: 8, warmup_teacher_temp_epochs: 2}",
             ["data.local_crop_seconds=0.3", "data.n_local_views=2"]),
    "c3_moco": ("{queue_size: 64, n_clusters: [2, 3], reweight_start_epoch: 1, proto_start_epoch: 1}", []),
}


@pytest.mark.parametrize("method", sorted(CASES))
def test_trainer_resume_is_exact(method, corpus, tmp_path):
    """Killed mid-epoch 1 and resumed: the same final state (teacher, center, schedules, prototypes) and losses."""
    import json

    from sslspeaker.training.checkpoint import load_checkpoint
    from sslspeaker.training.trainer import CHECKPOINT, Trainer

    options, extra = CASES[method]
    full = Trainer(_trainer_cfg(corpus, method, options, *extra), tmp_path / "a")
    seen = []
    full.method.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append({k: tuple(v.shape) for k, v in kwargs.items()}), with_kwargs=True)
    full.train()
    want = {"dino": {"local_feats": (4, 2, 40, 31)}, "c3_moco": {"index": (4,)}}[method]
    assert seen and all(s == want for s in seen)  # the trainer passes the extras the method wants
    assert full.step == 6 and int(full.method.epoch) == 3
    part = Trainer(_trainer_cfg(corpus, method, options, *extra), tmp_path / "b")
    part.train(stop_after_steps=3)
    assert load_checkpoint(tmp_path / "b" / CHECKPOINT)["position"] == {"step": 3, "epoch": 1, "batch": 1}
    torch.manual_seed(1234)
    resumed = Trainer(_trainer_cfg(corpus, method, options, *extra), tmp_path / "b", resume=True)
    resumed.train()
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    logs = [[json.loads(line) for line in open(tmp_path / run / "log.jsonl")] for run in ("a", "b")]
    losses = [[r["loss"] for r in log if "loss" in r] for log in logs]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    if method == "c3_moco":
        assert a["proto_assign_0"].shape == (9,) and int(a["proto_epoch"]) == 1  # clustered after epochs 0, 1
        assert [r["stage"] for r in logs[0] if "stage" in r] == [0, 0, 2, 2, 2, 2]
    else:
        assert [r["teacher_temp"] for r in logs[0] if "loss" in r][::2] == pytest.approx([0.04, 0.07, 0.07])


def test_dino_trains_compiled_on_two_crop_lengths(corpus, tmp_path):
    """train.compile with global and local crops: a static graph per crop length (with automatic dynamic
    shapes Inductor failed on the second length: 'cannot determine truth value of Relational')."""
    from sslspeaker.training.trainer import Trainer

    options, extra = CASES["dino"]
    t = Trainer(_trainer_cfg(corpus, "dino", options, *extra, "model.encoder=fast_resnet34",
                             "model.options={embed_dim: 16}", "train.compile=true", "train.epochs=1"), tmp_path)
    import json

    assert t.train()["step"] == 2
    losses = [r["loss"] for r in map(json.loads, open(tmp_path / "log.jsonl")) if "loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_dino_run_declares_its_teacher_for_export_init_and_pseudolabels(corpus, tmp_path):
    """The checkpoint names the teacher as the inference encoder: export, SpeakerEncoder.load and a later
    run's train.init_from take its weights; 'online' and 'momentum' pick either explicitly."""
    from sslspeaker.inference.checkpoint_source import read_checkpoint
    from sslspeaker.inference.model import SpeakerEncoder
    from sslspeaker.training.checkpoint import load_checkpoint
    from sslspeaker.training.export import export_model
    from sslspeaker.training.trainer import CHECKPOINT, Trainer

    options, extra = CASES["dino"]
    t = Trainer(_trainer_cfg(corpus, "dino", options, *extra, "train.epochs=2"), tmp_path / "dino")
    t.train()
    teacher, student = t.method.key_encoder.state_dict(), t.method.encoder.state_dict()
    differ = [k for k in teacher if teacher[k].is_floating_point() and not torch.equal(teacher[k], student[k])]
    assert differ  # the EMA teacher is not the student after training
    assert load_checkpoint(tmp_path / "dino" / CHECKPOINT)["inference_encoder"] == "key_encoder"
    for which, want in (("inference", teacher), ("auto", teacher), ("momentum", teacher), ("online", student)):
        state, meta, _ = read_checkpoint(tmp_path / "dino", which)
        assert all(torch.equal(state[k], want[k]) for k in want), which
        assert meta["provenance"]["encoder_weights"] == ("encoder" if which == "online" else "key_encoder")
    exported = SpeakerEncoder.load(export_model(tmp_path / "dino", tmp_path / "dino.safetensors"))
    assert all(torch.equal(exported.encoder.state_dict()[k], teacher[k]) for k in differ)
    with pytest.raises(ValueError, match="model file holds one encoder"):
        SpeakerEncoder.load(tmp_path / "dino.safetensors", encoder="momentum")
    follow = Trainer(_trainer_cfg(corpus, "dino", options, *extra, "train.epochs=1",
                                  f"train.init_from={tmp_path / 'dino' / CHECKPOINT}"), tmp_path / "next")
    assert all(torch.equal(follow.method.encoder.state_dict()[k], teacher[k]) for k in differ)
    assert all(torch.equal(follow.method.key_encoder.state_dict()[k], teacher[k]) for k in differ)


def test_momentum_encoder_of_a_run_without_one_is_named(corpus, tmp_path):
    from sslspeaker.inference.checkpoint_source import read_checkpoint
    from sslspeaker.training.trainer import Trainer

    t = Trainer(_trainer_cfg(corpus, "simclr", "{}", "train.epochs=1"), tmp_path / "simclr")
    t.train()
    state, meta, _ = read_checkpoint(tmp_path / "simclr", "auto")  # no momentum copy: the inference encoder
    assert meta["provenance"]["encoder_weights"] == "encoder"
    with pytest.raises(ValueError, match="no momentum encoder"):
        read_checkpoint(tmp_path / "simclr", "momentum")
    with pytest.raises(ValueError, match="encoder must be one of"):
        read_checkpoint(tmp_path / "simclr", "teacher")
