"""Supervised classifiers on noisy (pseudo-)labels: per-sample cross-entropy, the loss gates, the gated
mean and label correction against direct computations; the methods' gated losses, the gate's start
(gate_after) and its checkpoint state; n_classes filled in from data.train by the build step."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import TinyEncoder, write_audio
from sslspeaker.config import ConfigError, load_config
from sslspeaker.data.manifest import Entry, write_manifest
from sslspeaker.methods import build_method
from sslspeaker.methods.losses import (aam_softmax_logits, fraction_gate, gated_mean, per_sample_cross_entropy,
                                       relabelled, supcon)
from sslspeaker.methods.supervised import with_class_count
from sslspeaker.methods.views import encode_views

N_MELS, FRAMES = 6, 10


def feats(batch: int, views: int = 1, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, views, N_MELS, FRAMES, generator=torch.Generator().manual_seed(seed))


def make(name: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_method(name, TinyEncoder(), **{"n_classes": 5, **options})


def direct_losses(m, x: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Each view's AAM-softmax cross-entropy
    −log(e^(s·cos(θ_y+m)) / (e^(s·cos(θ_y+m)) + Σ_{j≠y} e^(s·cos θ_j)))."""
    emb = encode_views(m.encoder, nn.Identity(), x, normalize=False).flatten(0, 1).detach()
    y = labels.repeat_interleave(x.shape[1])
    out = []
    for e, label in zip(emb, y.tolist()):
        cos = [float(F.cosine_similarity(e, w, dim=0)) for w in m.weight.detach()]
        theta = math.acos(max(-1.0, min(1.0, cos[label])))
        target = m.scale * math.cos(theta + m.margin)
        others = [m.scale * c for j, c in enumerate(cos) if j != label]
        out.append(-target + math.log(math.exp(target) + sum(math.exp(o) for o in others)))
    return out


# ---- the equations -------------------------------------------------------------------------------
def test_per_sample_cross_entropy_matches_loop():
    logits = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 3, 1, 1, 2])
    got = per_sample_cross_entropy(logits.to(torch.bfloat16), labels)
    assert got.dtype == torch.float32 and got.shape == (5,)
    for i, y in enumerate(labels.tolist()):
        row = logits[i].to(torch.bfloat16).float().tolist()
        assert float(got[i]) == pytest.approx(-math.log(math.exp(row[y]) / sum(math.exp(v) for v in row)), abs=1e-5)


def test_fraction_gate_leaves_out_the_highest_fraction_of_the_finite_losses():
    losses = torch.tensor([0.5, 3.0, math.inf, 1.5, 2.0, 0.1, math.inf, 4.0])  # ∞: unlabelled rows
    # 6 finite losses: q = 0.34 leaves out ⌊2.04⌋ = 2 (4.0 and 3.0): g = 3.0, and ℓ < g keeps 0.1, 0.5, 1.5, 2.0
    g = fraction_gate(losses, 0.34)
    assert float(g) == 3.0
    assert sorted(losses[losses < g].tolist()) == pytest.approx([0.1, 0.5, 1.5, 2.0])
    assert float(fraction_gate(losses, 0.5)) == 2.0  # ⌊3⌋ left out: 4.0, 3.0, 2.0
    assert float(fraction_gate(losses, 0.1)) == math.inf  # ⌊0.6⌋ = 0 left out
    assert float(fraction_gate(torch.full((3,), math.inf), 0.5)) == math.inf  # no labelled row


def test_gated_mean_matches_a_direct_mean_and_keeps_nothing_without_nan():
    values = [0.2, 1.7, 0.9, 3.5, 1.2]
    losses = torch.tensor(values, requires_grad=True)
    kept = [v for v in values if v < 1.5]
    assert gated_mean(losses, 1.5).item() == pytest.approx(sum(kept) / len(kept))
    assert gated_mean(losses, 1.5, "sum").item() == pytest.approx(sum(kept))
    assert gated_mean(losses, math.inf).item() == pytest.approx(sum(values) / 5)
    gated_mean(losses, 1.5).backward()
    assert losses.grad.tolist() == pytest.approx([1 / 3, 0.0, 1 / 3, 0.0, 1 / 3])

    # a gate that keeps no row, with a left-out ∞ among them: zero loss, finite zero gradients
    inf_losses = torch.tensor([2.0, math.inf, 5.0], requires_grad=True)
    zero = gated_mean(inf_losses, 1.0)
    zero.backward()
    assert zero.item() == 0.0 and inf_losses.grad.tolist() == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="reduction"):
        gated_mean(losses, 1.0, "max")


def test_relabelled_takes_confident_predictions_only():
    logits = torch.tensor([[4.0, 0.0, 0.0],    # p ≈ 0.96 for class 0
                           [0.0, 1.0, 0.9],    # p ≈ 0.43 for class 1: not confident
                           [0.0, 0.0, 6.0],    # p ≈ 0.995 for class 2, already its label
                           [0.1, 0.0, 0.0]])
    labels = torch.tensor([2, 0, 2, 1])
    probs = F.softmax(logits, dim=1)
    expected = [int(p.argmax()) if float(p.max()) > 0.9 else y for p, y in zip(probs, labels.tolist())]
    assert expected == [0, 0, 2, 1]
    assert relabelled(logits, labels, 0.9).tolist() == expected
    assert relabelled(logits, labels, 0.36).tolist() == [0, 1, 2, 1]  # p = 0.44 for row 1, 0.356 for row 3


# ---- the methods -----------------------------------------------------------------------------------
def test_absolute_gate_is_the_mean_of_the_rows_below_it():
    m = make("aamsoftmax", margin=0.2, scale=10.0)
    x, labels = feats(6, views=2), torch.tensor([0, 1, -1, 4, 2, 1])
    losses = [v for v, y in zip(direct_losses(m, x, labels), labels.repeat_interleave(2).tolist()) if y >= 0]
    gate = sorted(losses)[4] + 1e-4  # five of the ten labelled rows below it
    gated = make("aamsoftmax", margin=0.2, scale=10.0, gate=gate)
    loss, logs = gated(x, labels)
    kept = [v for v in losses if v < gate]
    assert len(kept) == 5 and loss.item() == pytest.approx(sum(kept) / 5, abs=1e-4)
    assert logs["kept"] == 0.5 and logs["labelled"] == 10
    plain, plain_logs = m(x, labels)
    assert plain.item() == pytest.approx(sum(losses) / 10, abs=1e-4) and "kept" not in plain_logs


def test_gate_fraction_leaves_out_the_batchs_highest_losses():
    x, labels = feats(5, views=2), torch.tensor([3, 3, 0, 1, 2])
    m = make("aamsoftmax", gate_fraction=0.25)  # ⌊2.5⌋ = 2 of the 10 rows left out
    losses = direct_losses(m, x, labels)
    loss, logs = m(x, labels)
    assert loss.item() == pytest.approx(sum(sorted(losses)[:8]) / 8, abs=1e-4)
    assert logs["kept"] == 0.8
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("name", ["softmax", "amsoftmax", "aamsoftmax", "aamsupcon"])
def test_a_gate_that_keeps_nothing_gives_zero_loss_and_finite_gradients(name):
    m = make(name, gate=1e-6, **({} if name == "softmax" else {"scale": 1.0}))  # every ℓ ≥ log(1 + 4·e^(−2))
    loss, logs = m(feats(4, views=2), torch.tensor([0, 1, 2, 3]))
    cls = logs["aam"] if name == "aamsupcon" else loss.item()
    assert cls == 0.0 and logs["kept"] == 0.0
    loss.backward()
    grads = [p.grad for p in m.classifier_params()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(float(g.abs().sum()) == 0.0 for g in grads)  # the left-out rows train nothing


def test_aamsupcon_gates_its_aam_part_only():
    m = make("aamsupcon", temperature=0.2, gate_fraction=0.4)
    x, labels = feats(4, views=3), torch.tensor([1, 0, 1, -1])
    loss, logs = m(x, labels)
    losses = sorted(v for v, y in zip(direct_losses(m, x, labels), labels.repeat_interleave(3).tolist()) if y >= 0)
    aam = sum(losses[:6]) / 6  # 9 labelled rows, ⌊3.6⌋ = 3 left out
    emb = encode_views(m.encoder, nn.Identity(), x, normalize=False).flatten(0, 1)
    sc = supcon(F.normalize(m.projector(emb), dim=1), labels.repeat_interleave(3), 0.2)
    assert logs["aam"] == pytest.approx(aam, abs=1e-4) and logs["kept"] == pytest.approx(6 / 9)
    assert loss.item() == pytest.approx(aam + sc.item(), abs=1e-4)


def test_aamsupcon_aam_on_the_first_view_only_and_margin_inside_supcon():
    m = make("aamsupcon", temperature=0.2, aam_views="first", supcon_margin=0.1)
    x, labels = feats(4, views=3), torch.tensor([1, 0, 1, 3])
    loss, logs = m(x, labels)
    first = direct_losses(m, x, labels)[::3]  # rows b·3: each utterance's first view
    assert logs["aam"] == pytest.approx(sum(first) / 4, abs=1e-4)
    emb = encode_views(m.encoder, nn.Identity(), x, normalize=False).flatten(0, 1)
    sc = supcon(F.normalize(m.projector(emb), dim=1), labels.repeat_interleave(3), 0.2, margin=0.1)
    assert logs["supcon"] == pytest.approx(sc.item(), abs=1e-5) and loss.item() == pytest.approx(
        sum(first) / 4 + sc.item(), abs=1e-4)
    for bad, match in (({"aam_views": "last"}, "aam_views"), ({"supcon_margin": 1.5}, "supcon_margin")):
        with pytest.raises(ValueError, match=match):
            make("aamsupcon", **bad)


def test_gate_after_opens_the_gate_at_its_share_of_the_planned_steps_and_is_saved():
    x, labels = feats(4, views=2), torch.tensor([0, 1, 2, 3])
    m = make("amsoftmax", gate_fraction=0.5, gate_after=0.5)
    _, logs = m(x, labels)
    assert logs["kept"] == 1.0  # the first phase trains on every row
    for step in range(4):  # steps 0..3 of 10: the gate opens after round(0.5 · 10) = 5 steps
        m.after_step(step, 10)
    assert not bool(m.noise_handling)
    m.after_step(4, 10)
    assert bool(m.noise_handling)
    _, logs = m(x, labels)
    assert logs["kept"] == 0.5
    m.after_step(5, 100)  # a longer re-plan does not close an open gate
    assert bool(m.noise_handling)

    resumed = make("amsoftmax", gate_fraction=0.5, gate_after=0.5)
    resumed.load_state_dict(m.state_dict())
    assert bool(resumed.noise_handling)
    old = {k: v for k, v in m.state_dict().items() if k != "noise_handling"}  # a checkpoint from before the gate
    before = make("amsoftmax", gate_fraction=0.5, gate_after=0.5)
    before.load_state_dict(old)
    assert not bool(before.noise_handling)


def test_label_correction_trains_confident_rows_on_the_predicted_class():
    x, labels = feats(6), torch.tensor([0, 1, 2, 3, 4, 0])
    m = make("softmax", relabel_threshold=0.99)
    with torch.no_grad():  # every row: logits (0, 10, 0, 0, 0), p_1 = e^10 / (e^10 + 4) ≈ 0.99982
        m.classifier.weight.zero_()
        m.classifier.bias.copy_(torch.tensor([0.0, 10.0, 0.0, 0.0, 0.0]))
    logits = torch.tensor([[0.0, 10.0, 0.0, 0.0, 0.0]]).expand(6, 5)
    loss, logs = m(x, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, torch.ones(6, dtype=torch.long)).item(), abs=1e-6)
    assert logs["acc"] == 1.0 and logs["relabelled"] == pytest.approx(5 / 6)  # all but the row labelled 1
    strict = make("softmax", relabel_threshold=0.9999)  # p_1 below it: the labels stand
    strict.load_state_dict(m.state_dict())
    loss, logs = strict(x, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-5)
    assert logs["acc"] == pytest.approx(1 / 6) and logs["relabelled"] == 0.0
    later = make("softmax", relabel_threshold=0.99, gate_after=0.5)  # no correction in the first phase
    later.load_state_dict({**m.state_dict(), "noise_handling": torch.tensor(False)})
    loss, _ = later(x, labels)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels).item(), abs=1e-5)


@pytest.mark.parametrize("values, match", [
    ({"gate": -1.0}, "gate=-1.0"), ({"gate": 2.0, "gate_fraction": 0.2}, "not both"),
    ({"gate_fraction": 1.0}, "gate_fraction=1.0"), ({"gate_after": 1.0}, "gate_after=1.0"),
    ({"relabel_threshold": 1.5}, "relabel_threshold=1.5")])
def test_noise_options_checked(values, match):
    for name in ("softmax", "aamsoftmax", "aamsupcon"):
        with pytest.raises(ValueError, match=match):
            make(name, **values)


# ---- the class count ----------------------------------------------------------------------------
def test_with_class_count_fills_only_a_classifiers_missing_count():
    assert with_class_count("aamsoftmax", {"margin": 0.3}, 7) == {"margin": 0.3, "n_classes": 7}
    assert with_class_count("aamsupcon", {"n_classes": 0}, 7) == {"n_classes": 7}
    assert with_class_count("softmax", {"n_classes": 5}, 7) == {"n_classes": 5}
    assert with_class_count("moco", {"queue_size": 32}, 7) == {"queue_size": 32}
    given = {"n_classes": 0}
    with_class_count("amsoftmax", given, 3)
    assert given == {"n_classes": 0}  # a new dict


@pytest.fixture(scope="module")
def speakers(tmp_path_factory):
    """Six clips of three speakers (s0, s1, s2) and their manifest."""
    root = tmp_path_factory.mktemp("speakers")
    entries = []
    for i in range(6):
        write_audio(root / f"u{i}.wav", seconds=0.7, freq=150 + 60 * i)
        entries.append(Entry(str(root / f"u{i}.wav"), f"s{i % 3}", 0.7))
    write_manifest(root / "train.csv", entries)
    return root


def speaker_cfg(root, *extra):
    return load_config(None, [
        f"data.train={root / 'train.csv'}", "data.crop_seconds=0.5", "data.workers=0", "data.n_views=1",
        "model.encoder=tiny_test", "model.options={channels: 8, embed_dim: 8}", "method.name=aamsoftmax",
        "train.batch_size=2", "train.epochs=2", "train.log_every=1", "train.threads=1", "augment.mode=none", *extra])


def test_training_fills_in_the_class_count_records_it_and_logs_the_gate(speakers, tmp_path):
    from sslspeaker.training.trainer import Trainer

    t = Trainer(speaker_cfg(speakers, "method.options={gate_fraction: 0.5, gate_after: 0.5}"), tmp_path)
    assert t.method.n_classes == 3 and t.method.weight.shape[0] == 3
    saved = load_config(tmp_path / "config.yaml")
    assert saved.method.options == {"gate_fraction": 0.5, "gate_after": 0.5, "n_classes": 3}
    t.train()
    kept = [r["kept"] for r in map(json.loads, open(tmp_path / "log.jsonl")) if "kept" in r]
    # 3 steps per epoch, 6 planned: every row for round(0.5 · 6) = 3 steps, then ⌊0.5 · 2⌋ = 1 of 2 rows left out
    assert kept == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5]


def test_semi_supervised_count_is_every_speaker_and_an_explicit_count_is_kept(speakers, tmp_path):
    from sslspeaker.training.build import build_parts

    cfg = speaker_cfg(speakers, "data.labelled_fraction=0.34")  # one of the three speakers keeps its label
    parts = build_parts(cfg)
    assert cfg.method.options["n_classes"] == 3 and parts.method.n_classes == 3
    assert sorted(set(parts.dataset.labels)) in ([-1, 0], [-1, 1], [-1, 2])
    explicit = speaker_cfg(speakers, "method.options={n_classes: 4}")
    assert build_parts(explicit).method.n_classes == 4
    one = speaker_cfg(speakers, "method.options={n_classes: 0, gate: -1.0}")
    with pytest.raises(ConfigError, match="method: need gate >= 0"):
        build_parts(one)


def test_selftrain_recipe_takes_its_class_count_from_the_pseudo_label_manifest(speakers):
    from pathlib import Path

    from sslspeaker.training.build import build_parts

    recipe = Path(__file__).resolve().parents[1] / "configs" / "selftrain_aam_speechocean762.yaml"
    cfg = load_config(recipe, [f"data.train={speakers / 'train.csv'}", "model.encoder=fast_resnet34"])
    assert cfg.method.options["n_classes"] == 0
    assert (cfg.method.options["gate_fraction"], cfg.method.options["gate_after"]) == (0.0, 0.0)  # off by default
    parts = build_parts(cfg)
    assert cfg.method.options["n_classes"] == 3 and parts.method.n_classes == 3 and not parts.method.gated
