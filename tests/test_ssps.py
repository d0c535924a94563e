"""SSPS (methods/ssps.py): the candidate rule and the uniform draw against direct computations; SimCLR's and
MoCo's losses with sampled positives against a direct computation; the clustering stage; a trainer run."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import TinyEncoder
from sslspeaker.methods import build_method
from sslspeaker.methods.base import EpochContext
from sslspeaker.methods.losses import contrastive_logits, positive_cross_entropy
from sslspeaker.methods.simclr import with_pseudo_positives
from sslspeaker.methods.ssps import pseudo_positive_candidates, sample_candidates

N_MELS, FRAMES = 6, 10


def feats(batch: int, views: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, views, N_MELS, FRAMES, generator=torch.Generator().manual_seed(seed))


def test_candidates_match_a_direct_loop():
    assign = torch.tensor([0, 1, 0, 2, 1, 0])  # cluster of each training utterance
    anchors = torch.tensor([0, 1, 3, 5])
    queue_index = torch.tensor([2, 0, -1, 4, 5, 3, 1])
    queue_cluster = torch.where(queue_index >= 0, assign[queue_index.clamp(min=0)], -1)
    got = pseudo_positive_candidates(anchors, assign[anchors], queue_index, queue_cluster)
    for i, a in enumerate(anchors.tolist()):
        for j, u in enumerate(queue_index.tolist()):
            want = u >= 0 and u != a and int(assign[u]) == int(assign[a])
            assert bool(got[i, j]) == want, (a, u)


def test_draw_is_uniform_over_the_candidates_only():
    cand = torch.tensor([[True, False, True, True], [False, False, False, False]])
    torch.manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(3000):
        choice, found = sample_candidates(cand)
        counts[choice[0]] += 1
        assert found.tolist() == [True, False]
    assert counts[1] == 0 and all(abs(c / 3000 - 1 / 3) < 0.04 for c in counts[[0, 2, 3]])


def test_pseudo_positive_logits_replace_the_positive_column_only():
    logits, target = torch.randn(3, 5), torch.tensor([2, 0, 4])
    a, p = F.normalize(torch.randn(3, 4), dim=1), F.normalize(torch.randn(3, 4), dim=1)
    out = with_pseudo_positives(logits, target, a, p, torch.tensor([True, False, True]), 0.1, 0.2)
    want = logits.clone()
    for i in (0, 2):
        want[i, target[i]] = (float(a[i] @ p[i]) - 0.2) / 0.1
    torch.testing.assert_close(out, want)


def _activate(m, assign, queue_emb=None, queue_index=None):
    """Clusters of the training set (and, for SimCLR, queued positives) as after an SSPS epoch end."""
    m.ssps.assign = torch.as_tensor(assign)
    m.ssps.epoch.fill_(int(m.ssps.start))
    if queue_emb is not None:
        m.ssps.queue[: len(queue_emb)] = queue_emb
        m.ssps.queue_index[: len(queue_index)] = torch.as_tensor(queue_index)


def test_simclr_with_sampled_positives_matches_a_direct_computation():
    torch.manual_seed(0)
    m = build_method("simclr", TinyEncoder(), temperature=0.2, symmetric=False, ssps=True, ssps_start_epoch=0,
                     ssps_clusters=2, ssps_queue_size=4).eval()
    assert m.wants == ("index",)
    q = F.normalize(torch.randn(2, 8), dim=1)
    _activate(m, [0, 0, 1, 1, 1], q, [1, 3])  # utterances 0, 1 in cluster 0; 2, 3, 4 in cluster 1
    x, index = feats(3), torch.tensor([0, 2, 4])
    loss, _ = m(x, index=index)
    z = m.embed(x).detach()
    # anchor 0 (cluster 0): queued positive of utterance 1; anchors 2 and 4: utterance 3's; all found
    pos = [q[0], q[1], q[1]]
    terms = []
    for i in range(3):
        logits = [float(z[i, 0] @ z[j, 1]) / 0.2 for j in range(3)]
        logits[i] = float(z[i, 0] @ pos[i]) / 0.2
        terms.append(-logits[i] + math.log(sum(math.exp(v) for v in logits)))
    assert float(loss) == pytest.approx(sum(terms) / 3, abs=1e-5)
    plain = build_method("simclr", TinyEncoder(), temperature=0.2, symmetric=False).eval()
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("ssps.")})
    m.ssps.assign = torch.tensor([0, 1, 2, 3, 4])  # every utterance alone: nobody to sample, plain SimCLR
    torch.testing.assert_close(m(x, index=index)[0], plain(x)[0])


def test_moco_with_sampled_keys_matches_a_direct_computation():
    torch.manual_seed(0)
    m = build_method("moco", TinyEncoder(), queue_size=4, temperature=0.2, ssps=True, ssps_start_epoch=0,
                     ssps_clusters=2).eval()
    m.queue_index[:] = torch.tensor([1, 3, 2, -1])
    _activate(m, [0, 0, 1, 1])
    x, index = feats(2, seed=3), torch.tensor([0, 2])
    queue = m.queue.clone()
    loss, _ = m(x, index=index)
    qv = m.encode_queries(x[:, 0])
    # query 0 (cluster 0): queued key 0 (utterance 1); query 2 (cluster 1): queued key 1 (utterance 3),
    # each then out of the negatives, as is the query's own key (row 2 is utterance 2's)
    masks = [torch.tensor([True, False, False, False]), torch.tensor([False, True, True, False])]
    terms = []
    for i, (j, own) in enumerate(zip((0, 1), masks)):
        logits = contrastive_logits(qv[i:i + 1], queue[j:j + 1], queue[~own], 0.2)
        terms.append(float(positive_cross_entropy(logits)))
    assert float(loss) == pytest.approx(sum(terms) / 2, abs=1e-5)


def test_epoch_end_clusters_the_reference_embeddings_from_the_start():
    calls = []

    def embed_training_set(encoder, crop_seconds=None):
        calls.append(encoder)
        return F.normalize(torch.cat([torch.randn(5, 8) * 0.01 + 5 * torch.eye(8)[0],
                                      torch.randn(5, 8) * 0.01 + 5 * torch.eye(8)[1]]), dim=1)

    m = build_method("simclr", TinyEncoder(), ssps=True, ssps_start_epoch=2, ssps_clusters=2)
    for epoch in range(3):
        m.on_epoch_end(EpochContext(epoch=epoch, planned_epochs=10, step=0, steps_per_epoch=1, total_steps=10,
                                    device=torch.device("cpu"), embed_training_set=embed_training_set))
        assert m.ssps.active() == (epoch >= 1)
    assert len(calls) == 2 and calls[0] is m.encoder  # after epochs 1 and 2
    a = m.ssps.assign
    assert len(set(a[:5].tolist())) == 1 and len(set(a[5:].tolist())) == 1 and a[0] != a[5]
    fresh = build_method("simclr", TinyEncoder(), ssps=True, ssps_start_epoch=2, ssps_clusters=2)
    fresh.load_state_dict(m.state_dict())
    assert torch.equal(fresh.ssps.assign, a) and fresh.ssps.active()
    with pytest.raises(ValueError, match="ssps_clusters"):
        build_method("moco", TinyEncoder(), ssps=True, ssps_clusters=1)
    assert "ssps.assign" not in build_method("simclr", TinyEncoder()).state_dict()  # off: no state at all


@pytest.mark.parametrize("method", ["simclr", "moco"])
def test_trains_with_ssps_in_the_trainer(method, tmp_path):
    import json

    from conftest import write_audio
    from sslspeaker.config import load_config
    from sslspeaker.data.manifest import Entry, write_manifest
    from sslspeaker.training.trainer import Trainer

    entries = []
    for i in range(8):
        path = tmp_path / "audio" / f"u{i}.wav"
        write_audio(path, seconds=0.8, freq=150 + 60 * (i % 4))
        entries.append(Entry(str(path), None, 0.8))
    write_manifest(tmp_path / "train.csv", entries)
    cfg = load_config(None, [f"data.train={tmp_path / 'train.csv'}", "data.crop_seconds=0.5", "data.workers=0",
                             "model.encoder=tiny_test", f"method.name={method}",
                             "method.options={ssps: true, ssps_start_epoch: 1, ssps_clusters: 4, ssps_queue_size: 8}",
                             "train.batch_size=4", "train.epochs=3", "train.log_every=1", "train.threads=1",
                             "augment.mode=none"])
    t = Trainer(cfg, tmp_path / "run")
    t.train()
    assert t.method.ssps.assign.shape == (8,) and t.method.ssps.active()
    losses = [r["loss"] for r in map(json.loads, open(tmp_path / "run" / "log.jsonl")) if "loss" in r]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)


def test_dino_targets_come_from_the_teacher_head_of_a_sampled_embedding():
    from sslspeaker.methods.dino import dino_cross_entropy

    torch.manual_seed(0)
    m = build_method("dino", TinyEncoder(), out_dim=16, hidden_dim=12, bottleneck_dim=6, ssps=True,
                     ssps_start_epoch=0, ssps_clusters=2, ssps_queue_size=4).eval()
    assert m.wants == ("local_feats", "index")
    queued = torch.randn(2, 8)
    _activate(m, [0, 0, 1, 1], queued, [1, 3])
    x, index = feats(2, seed=4), torch.tensor([0, 2])
    loss, _ = m(x, index=index)
    with torch.no_grad():
        g = torch.cat([x[:, 0], x[:, 1]])
        s = m._head(m.head, m.encoder(g)).reshape(2, 2, -1)
        t = m._head(m.key_head, queued).reshape(1, 2, -1).expand(2, 2, -1)  # anchor 0 <- utt 1, anchor 2 <- utt 3
        want = dino_cross_entropy(s, t, m.center, m.current_teacher_temp(), m.student_temp)
    assert float(loss) == pytest.approx(float(want), abs=1e-5)
