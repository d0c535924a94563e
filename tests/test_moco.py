"""MoCo method: InfoNCE equation, momentum update, queue, shuffle BN, state, DDP (2-process gloo)."""

from __future__ import annotations

import logging
import math

import pytest
import torch

import torch.nn.functional as F


from conftest import TinyEncoder
from sslspeaker.methods import MoCo, build_method, list_methods
from sslspeaker.methods.losses import contrastive_logits, info_nce
from sslspeaker.methods.moco import shuffle_permutation

N_MELS, FRAMES, DIM = 6, 10, 8




def make_moco(seed: int = 0, **options) -> MoCo:
    torch.manual_seed(seed)
    return MoCo(TinyEncoder(), seed=seed, **{"queue_size": 32, **options})


def feats(batch: int, views: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, views, N_MELS, FRAMES, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def sgd_step(method: MoCo, lr: float) -> None:
    # plain SGD by hand: constructing the first torch.optim optimizer costs seconds of imports
    for p in method.parameters():
        if p.grad is not None:
            p -= lr * p.grad
            p.grad = None


def train_step(method: MoCo, x: torch.Tensor, lr: float = 0.1) -> float:
    loss, _ = method(x)
    loss.backward()
    sgd_step(method, lr)
    method.after_step(0, 1)
    return loss.item()


# ---- equations ----------------------------------------------------------------------------
@pytest.mark.parametrize("margin", [0.0, 0.2])
def test_info_nce_matches_loop(margin):
    g = torch.Generator().manual_seed(0)
    q, k, queue = (F.normalize(torch.randn(n, 5, generator=g, dtype=torch.float64), dim=1) for n in (4, 4, 7))
    tau = 0.07
    per_anchor = []
    for i in range(4):
        s_pos = float(q[i] @ k[i]) - margin
        s_neg = [float(q[i] @ queue[j]) for j in range(7)]
        denom = math.exp(s_pos / tau) + sum(math.exp(s / tau) for s in s_neg)
        per_anchor.append(-math.log(math.exp(s_pos / tau) / denom))
    expected = sum(per_anchor) / 4
    assert float(info_nce(q, k, queue, tau, margin)) == pytest.approx(expected, abs=1e-5)


def test_logits_float32_under_bf16_autocast():
    g = torch.Generator().manual_seed(0)
    q, k, queue = (F.normalize(torch.randn(n, 16, generator=g), dim=1) for n in (4, 4, 9))
    ref = contrastive_logits(q, k, queue, 0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = contrastive_logits(q.bfloat16(), k.bfloat16(), queue, 0.07)
    assert out.dtype == torch.float32
    # bf16 inputs are rounded, but the products are not: error ~ input rounding / τ only
    assert torch.allclose(out, contrastive_logits(q.bfloat16(), k.bfloat16(), queue, 0.07).float(), atol=1e-6)
    assert torch.allclose(out, ref, atol=0.2)


# ---- momentum, gradients -----------------------------------------------------------------
def test_momentum_update_and_no_key_grads():
    m = make_moco(momentum=0.9, projector="mlp", proj_hidden=16, proj_dim=8)
    loss, _ = m(feats(8))
    loss.backward()
    key_params = [*m.key_encoder.parameters(), *m.key_projector.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in key_params)
    assert all(p.grad is not None for p in [*m.encoder.parameters(), *m.projector.parameters()])
    sgd_step(m, 0.5)
    old_k = [p.clone() for p in key_params]
    q = [*m.encoder.parameters(), *m.projector.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(old_k, q))  # the step made them differ
    m.after_step(0, 10)
    for k_new, k_old, p_q in zip(key_params, old_k, q):
        assert torch.allclose(k_new, 0.9 * k_old + 0.1 * p_q, atol=1e-6)
    key_bufs = [*m.key_encoder.buffers(), *m.key_projector.buffers()]
    query_bufs = [*m.encoder.buffers(), *m.projector.buffers()]
    assert len(key_bufs) == 6 and all(torch.equal(b_k, b_q) for b_k, b_q in zip(key_bufs, query_bufs))


@pytest.mark.parametrize("symmetric", [False, True])
def test_forward_backward_step(symmetric):
    m = make_moco(symmetric=symmetric)
    loss, logs = m(feats(8, views=3))  # extra views are ignored
    assert torch.isfinite(loss) and set(logs) == {"loss", "pos_cos", "neg_cos", "top1"}
    assert all(math.isfinite(v) for v in logs.values()) and logs["loss"] == pytest.approx(loss.item())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.encoder.parameters())
    assert all(p.grad is None for p in m.key_encoder.parameters())
    sgd_step(m, 0.1)
    m.after_step(0, 1)
    assert int(m.queue_ptr) == (16 if symmetric else 8)


def test_bf16_autocast_forward_keeps_float32():
    m = make_moco()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = m(feats(8))
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and m.queue.dtype == torch.float32
    assert torch.allclose(m.queue.norm(dim=1), torch.ones(32), atol=1e-5)


def test_eval_forward_changes_no_state():
    m = make_moco().eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m(feats(4))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


# ---- queue --------------------------------------------------------------------------------
def test_queue_fifo_wraps_around():
    m = make_moco(queue_size=10)
    batches = [torch.full((4, DIM), float(i)) for i in range(1, 4)]
    m.enqueue(batches[0])
    assert int(m.queue_ptr) == 4 and (m.queue[:4] == 1).all()
    m.enqueue(batches[1])
    assert int(m.queue_ptr) == 8 and (m.queue[4:8] == 2).all()
    init_tail = m.queue[8:].clone()
    m.enqueue(batches[2])  # rows 8, 9, then 0, 1
    assert int(m.queue_ptr) == 2
    assert (m.queue[8:] == 3).all() and (m.queue[:2] == 3).all() and (m.queue[2:4] == 1).all()
    assert not torch.equal(init_tail, m.queue[8:])
    big = torch.arange(13, dtype=torch.float32)[:, None].expand(13, DIM)
    m.enqueue(big)  # more keys than K: the newest 10 land where 13 sequential writes would leave them
    assert int(m.queue_ptr) == (2 + 13) % 10
    expected_rows = {(2 + j) % 10: j for j in range(13)}
    assert all((m.queue[r] == v).all() for r, v in expected_rows.items())


def test_own_utterance_keys_leave_the_denominator():
    """Loss with dataset indices == the InfoNCE loop over the queued keys of other utterances only."""
    m = make_moco(queue_size=6).eval()  # eval: no shuffle/enqueue, so q and k can be recomputed
    x, index = feats(3), torch.tensor([4, 7, 9])
    m.enqueue(F.normalize(torch.randn(6, DIM, generator=torch.Generator().manual_seed(3)), dim=1),
              torch.tensor([7, 1, 4, 4, -1, 2]))  # anchor 0 (utt 4) owns keys 2, 3; anchor 1 owns key 0
    assert m.queue_index.tolist() == [7, 1, 4, 4, -1, 2]
    loss, _ = m(x, index=index)
    with torch.no_grad():
        q, k = m.encode_queries(x[:, 0]).double(), m.encode_keys(x[:, 1])[0].double()
    tau, queue, per_anchor = m.temperature, m.queue.double(), []
    for i, own in enumerate([{2, 3}, {0}, set()]):
        terms = [math.exp(float(q[i] @ queue[j]) / tau) for j in range(6) if j not in own]
        pos = math.exp(float(q[i] @ k[i]) / tau)
        per_anchor.append(-math.log(pos / (pos + sum(terms))))
    assert loss.item() == pytest.approx(sum(per_anchor) / 3, abs=1e-5)
    assert float(m(x)[0]) > float(loss)  # without indices the own keys count as negatives
    off = make_moco(queue_size=6, exclude_own_keys=False).eval()
    off.load_state_dict(m.state_dict())
    assert float(off(x, index=index)[0]) == pytest.approx(float(m(x)[0]), abs=1e-6)


def test_training_step_enqueues_key_indices():
    m = make_moco(queue_size=8, symmetric=True)
    loss, _ = m(feats(4), index=torch.tensor([10, 11, 12, 13]))
    assert m.queue_index.tolist() == [10, 11, 12, 13, 10, 11, 12, 13]  # one key per pair and utterance
    m.enqueue(torch.zeros(2, DIM))  # keys of unknown origin
    assert m.queue_index[:2].tolist() == [-1, -1] and int(m.queue_ptr) == 2
    old = {k: v for k, v in m.state_dict().items() if k != "queue_index"}  # a checkpoint from before
    fresh = make_moco(queue_size=8, symmetric=True)
    fresh.load_state_dict(old)
    assert fresh.queue_index.tolist() == [-1] * 8 and torch.equal(fresh.queue, m.queue)


def test_clamp_queue_warns(caplog):
    m = make_moco(queue_size=100)
    with caplog.at_level(logging.WARNING, logger="sslspeaker.methods.moco"):
        assert m.clamp_queue(50, 8) == 48
    assert m.queue.shape == (48, DIM) and "clamping" in caplog.text
    assert make_moco(queue_size=100, symmetric=True).clamp_queue(50, 8) == 96
    assert make_moco(queue_size=16).clamp_queue(50, 8) == 16


# ---- shuffle BN ---------------------------------------------------------------------------
def test_shuffle_bn_unshuffles_and_separates_statistics():
    m = make_moco(bn_splits=4)
    x = feats(8)[:, 1]
    count = int(m.shuffle_count)
    keys, keys_all = m.encode_keys(x)
    assert torch.equal(keys, keys_all) and int(m.shuffle_count) == count + 1
    perm = shuffle_permutation(8, 0, count)
    expected = torch.empty_like(keys)
    with torch.no_grad():
        for chunk in perm.tensor_split(4):  # each shuffled sub-batch on its own, scattered back
            expected[chunk] = F.normalize(m.key_encoder(x[chunk]), dim=1)
    assert torch.allclose(keys, expected, atol=1e-5)

    one = make_moco(bn_splits=1)
    assert not torch.allclose(one.encode_keys(x)[0], keys, atol=1e-3)  # BN statistics differ per sub-batch


def test_queries_use_contiguous_sub_batches():
    m = make_moco(bn_splits=2)
    x = feats(8)[:, 0]
    with torch.no_grad():
        expected = torch.cat([F.normalize(m.encoder(c), dim=1) for c in x.tensor_split(2)])
        assert torch.allclose(m.encode_queries(x), expected, atol=1e-6)


# ---- state --------------------------------------------------------------------------------
def test_state_dict_round_trip():
    a = make_moco(seed=0)
    a.clamp_queue(24, 8)  # checkpoint with a clamped queue must load into a fresh method
    for s in range(2):
        train_step(a, feats(8, seed=s))
    b = make_moco(seed=5)
    b.load_state_dict(a.state_dict())
    assert int(b.queue_ptr) == 16 and b.queue.shape == a.queue.shape and int(b.shuffle_seed) == 0
    x = feats(8, seed=9)
    la, lb = a(x)[0], b(x)[0]
    assert torch.equal(la, lb)
    assert torch.equal(a.queue, b.queue) and torch.equal(a.queue_ptr, b.queue_ptr)


# ---- registry -----------------------------------------------------------------------------
def test_registry():
    m = build_method("moco", TinyEncoder(), queue_size=16, symmetric=True)
    assert isinstance(m, MoCo) and m.inference_encoder() is m.encoder
    assert list_methods()["moco"].startswith("MoCo")
    torch.manual_seed(7)  # the trainer seeds torch; the shuffle stream follows it by default
    assert int(build_method("moco", TinyEncoder(), queue_size=4).shuffle_seed) == 7
    with pytest.raises(ValueError, match="nosuch"):
        build_method("nosuch", TinyEncoder())
    with pytest.raises(ValueError, match="queue_sise"):
        build_method("moco", TinyEncoder(), queue_sise=16)
    with pytest.raises(ValueError, match="projector"):
        build_method("moco", TinyEncoder(), projector="deep")


# ---- DDP ----------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from sslspeaker.distributed import gather_with_grad

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        m = make_moco(seed=0)
        assert m.bn_splits == 1
        x = feats(4, seed=10 + rank)
        loss, _ = m(x)
        loss.backward()
        # gather_with_grad: grad of the local shard sums every rank's use of it
        v = torch.full((3,), float(rank + 1), requires_grad=True)
        (gather_with_grad(v) ** 2 * (rank + 1)).sum().backward()
        result = {"queue": m.queue, "ptr": m.queue_ptr, "loss": loss.detach(), "vgrad": v.grad}
        torch.save(result, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_queue_identical_and_holds_all_ranks_keys(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert torch.equal(r0["queue"], r1["queue"]) and int(r0["ptr"]) == int(r1["ptr"]) == 8

    # Single-process replay of the cross-rank shuffle: global batch, permutation 0, one shard per rank.
    m = make_moco(seed=0)
    x = [feats(4, seed=10 + r) for r in range(2)]
    xk = torch.cat([xi[:, 1] for xi in x])
    perm = shuffle_permutation(8, 0, 0)
    keys = torch.empty(8, DIM)
    with torch.no_grad():
        for shard in perm.tensor_split(2):
            keys[shard] = F.normalize(m.key_encoder(xk[shard]), dim=1)
        assert torch.allclose(r0["queue"][:8], keys, atol=1e-5)  # both ranks' keys, in rank order
        assert torch.equal(r0["queue"][8:], m.queue[8:])
        for r in range(2):
            q = F.normalize(m.encoder(x[r][:, 0]), dim=1)
            expected = info_nce(q, keys[4 * r : 4 * r + 4], m.queue, 0.07)
            assert torch.allclose(expected, (r0, r1)[r]["loss"], atol=1e-5)
    for r, res in enumerate((r0, r1)):
        assert torch.allclose(res["vgrad"], torch.full((3,), 2.0 * (r + 1) * (1 + 2)))
