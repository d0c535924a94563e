import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import write_audio
from sslspeaker.config import ConfigError, load_config
from sslspeaker.data.manifest import Entry, write_manifest
from sslspeaker.training.checkpoint import load_checkpoint
from sslspeaker.training.trainer import CHECKPOINT, Trainer, TrainingStopped




@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    entries = [Entry(str(write_audio(root / f"s{i % 3}" / f"u{i}.wav", seconds=0.6 + 0.1 * i, freq=120 + 40 * i)
                         is not None and root / f"s{i % 3}" / f"u{i}.wav"), None, 0.6 + 0.1 * i) for i in range(9)]
    write_manifest(root / "train.csv", entries)
    for i in range(2):
        write_audio(root / "noise" / f"n{i}.wav", seconds=2.0, freq=900 + 300 * i, amplitude=0.5)
    rir = np.zeros(800, np.float32)
    rir[0], rir[300], rir[700] = 1.0, 0.4, 0.1
    import soundfile as sf
    (root / "rir").mkdir()
    sf.write(str(root / "rir" / "r.wav"), rir, 16000)
    return root


def make_cfg(corpus, *extra):
    return load_config(None, [
        f"data.train={corpus / 'train.csv'}", "data.crop_seconds=0.5", "data.workers=0",
        "model.encoder=tiny_test", "model.options={channels: 32, embed_dim: 16}", "method.options={queue_size: 64}",
        "train.batch_size=4", "train.epochs=3",
        "train.checkpoint_every=1", "train.log_every=1", "train.threads=1", "optim.lr=0.05",
        "augment.mode=N|R", f"augment.noise=[{corpus / 'noise'}]", f"augment.rir=[{corpus / 'rir'}]", *extra])


def final_state(trainer):
    return {k: v.clone() for k, v in trainer.method.state_dict().items()}


def test_resume_equals_uninterrupted_run(corpus, tmp_path):
    full = Trainer(make_cfg(corpus), tmp_path / "a")
    full.train()
    assert full.step == 6 and full.epoch == 3  # 9 files // batch 4 = 2 steps per epoch
    # killed mid-epoch (step 3 = epoch 1, batch 1), resumed in a new process-like Trainer,
    # this time reading through a DataLoader worker: the result must be identical
    part = Trainer(make_cfg(corpus, "data.workers=1"), tmp_path / "b")
    part.train(stop_after_steps=3)
    ckpt = load_checkpoint(tmp_path / "b" / CHECKPOINT)
    assert ckpt["position"] == {"step": 3, "epoch": 1, "batch": 1}
    torch.manual_seed(1234)  # resume must not depend on the process's RNG state
    resumed = Trainer(make_cfg(corpus), tmp_path / "b", resume=True)
    resumed.train()
    a, b = final_state(full), final_state(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(a["queue"], b["queue"]) and int(a["queue_ptr"]) == int(b["queue_ptr"])
    la = [json.loads(l) for l in open(tmp_path / "a" / "log.jsonl")]
    lb = [json.loads(l) for l in open(tmp_path / "b" / "log.jsonl")]
    assert [r["loss"] for r in la if "loss" in r] == [r["loss"] for r in lb if "loss" in r]


def test_queue_clamped_to_data_and_config_saved(corpus, tmp_path):
    t = Trainer(make_cfg(corpus, "method.options={queue_size: 65536}"), tmp_path)
    assert t.method.queue.shape[0] <= 9  # never more keys than utterances
    saved = load_config(tmp_path / "config.yaml")
    assert saved.train.batch_size == 4 and saved.model.encoder == "tiny_test"


def test_nonfinite_losses_stop_with_last_good_checkpoint(corpus, tmp_path, monkeypatch):
    t = Trainer(make_cfg(corpus, "train.max_nonfinite=2"), tmp_path)
    t.train(stop_after_steps=2)
    good = load_checkpoint(tmp_path / CHECKPOINT)
    forward = t.method.forward

    def poisoned(feats, labels=None, **extras):
        loss, logs = forward(feats, labels, **extras)
        return loss * float("nan"), logs

    monkeypatch.setattr(t, "forward", poisoned)
    with pytest.raises(TrainingStopped, match="2 non-finite losses in a row"):
        t.train()
    after = load_checkpoint(tmp_path / CHECKPOINT)
    assert after["position"] == good["position"]
    assert all(torch.equal(good["method"][k], after["method"][k]) for k in good["method"])
    events = [json.loads(l) for l in open(tmp_path / "log.jsonl")]
    assert sum(e.get("event") == "non-finite loss" for e in events) == 2


def test_strict_config_errors(corpus, tmp_path):
    with pytest.raises(ConfigError, match="unknown key train.bacth_size"):
        make_cfg(corpus, "train.bacth_size=3")
    with pytest.raises(ConfigError, match="method: .*unknown option"):
        Trainer(make_cfg(corpus, "method.options={qeue_size: 3}"), tmp_path)
    with pytest.raises(ConfigError, match="unknown encoder"):
        Trainer(make_cfg(corpus, "model.encoder=resnet999"), tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        Trainer(make_cfg(corpus, f"data.train={tmp_path / 'missing.csv'}"), tmp_path)


def test_recipe_base_merges_sections_and_replaces_another_method(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "data: {train: [a.csv], crop_seconds: 1.0}\nfeatures: {n_mels: 40, norm: global}\n"
        "method: {name: moco, options: {queue_size: 64, momentum: 0.99}}\n"
        "optim: {name: sgd, lr: 0.1, momentum: 0.9}\ntrain: {epochs: 90, batch_size: 64}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "base: ../base.yaml\nmethod: {name: simclr, options: {temperature: 0.03}}\n"
        "optim: {name: sgd, lr: 0.05}\ntrain: {epochs: 60}\n")
    cfg = load_config(tmp_path / "sub" / "child.yaml", ["features.n_mels=64"])
    assert [m.manifest for m in cfg.data.train] == ["a.csv"] and cfg.data.crop_seconds == 1.0 and cfg.features.norm == "global"
    assert cfg.features.n_mels == 64  # command line over child over base
    assert cfg.method.name == "simclr" and cfg.method.options == {"temperature": 0.03}  # no MoCo options leak
    assert cfg.optim.lr == 0.05 and cfg.optim.momentum == 0.9  # same optimiser: merged
    assert cfg.train.epochs == 60 and cfg.train.batch_size == 64
    (tmp_path / "loop.yaml").write_text("base: loop.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "loop.yaml")
    (tmp_path / "orphan.yaml").write_text("base: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml: no such recipe"):
        load_config(tmp_path / "orphan.yaml")


def test_max_minutes_stops_with_checkpoint_and_cli_resumes(corpus, tmp_path):
    from sslspeaker.cli import main

    args = ["train", "-", f"data.train={corpus / 'train.csv'}", "data.crop_seconds=0.5", "data.workers=0",
            "model.encoder=tiny_test", "method.options={queue_size: 8}", "train.batch_size=4", "train.epochs=2",
            "train.threads=1"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train: {seed: 7}\n")
    args[1] = str(recipe)
    assert main(args + ["--out", str(tmp_path / "run"), "--max-minutes", "0"]) == 0
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["position"]["step"] == 1
    assert main(args + ["--out", str(tmp_path / "run"), "--resume"]) == 0
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["position"] == {"step": 4, "epoch": 2, "batch": 0}


@pytest.mark.slow
def test_torchrun_two_processes_gloo(corpus, tmp_path):
    """The same command under torchrun: two CPU ranks (gloo), sharded data, one shared queue."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
           "-m", "sslspeaker.cli", "train", str(tmp_path / "r.yaml"), f"data.train={corpus / 'train.csv'}",
           "data.crop_seconds=0.5", "data.workers=0", "model.options={embed_dim: 32}",
           "method.options={queue_size: 16}", "train.batch_size=2", "train.epochs=1", "train.threads=1",
           "train.device=cpu", "--out", str(tmp_path / "ddp")]
    (tmp_path / "r.yaml").write_text("model: {encoder: fast_resnet34}\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "ddp" / CHECKPOINT)
    assert ckpt["position"] == {"step": 2, "epoch": 1, "batch": 0}  # 9 // (2 x 2 ranks) = 2 steps
    # the queue is clamped to 8 (9 utterances, global batch 4); 2 steps x 4 keys gathered from
    # both ranks fill it exactly once, so the pointer is back at 0
    assert ckpt["method"]["queue"].shape[0] == 8 and int(ckpt["method"]["queue_ptr"]) == 0


def test_embed_training_set(corpus, tmp_path):
    """Whole utterances by default (each alone: the same as a batch of one of its whole audio), or a crop."""
    from sslspeaker.data.audio import read_audio

    t = Trainer(make_cfg(corpus, "augment.mode=none"), tmp_path)
    emb = t.embed_training_set()
    assert emb.shape == (9, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(9, device=emb.device))  # on the training device
    encoder = t.method.inference_encoder().eval()
    for i in (0, 4):
        wave = torch.from_numpy(read_audio(t.dataset.entries[i].path))[None]
        alone = torch.nn.functional.normalize(encoder(t.features(wave)).float(), dim=1)[0]
        assert torch.nn.functional.cosine_similarity(alone, emb[i], dim=0) > 0.999
    cropped = t.embed_training_set(crop_seconds=0.5)
    assert cropped.shape == (9, 16) and not torch.allclose(cropped, emb, atol=1e-3)
    t.dataset.entries[3] = dataclasses.replace(t.dataset.entries[3], path=str(tmp_path / "gone.wav"))
    gone = t.embed_training_set()  # an unreadable file: a zero row, the others unchanged
    assert torch.equal(gone[3], torch.zeros(16, device=gone.device))
    torch.testing.assert_close(gone[[0, 4]], emb[[0, 4]], atol=1e-6, rtol=0)


@pytest.mark.parametrize("planned", [3, 100])
def test_fit_to_budget_replans_epochs_so_the_schedule_ends_in_time(corpus, tmp_path, monkeypatch, planned):
    import types

    import sslspeaker.training.trainer as trainer_mod

    now = [0.0]  # a fake clock: every training step costs 10 s, so an epoch (2 steps) costs 20 s
    monkeypatch.setattr(trainer_mod, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    t = Trainer(make_cfg(corpus, f"train.epochs={planned}", "train.fit_to_budget=true"), tmp_path / "run")
    step = t.method.after_step
    monkeypatch.setattr(t.method, "after_step", lambda s, total: (now.__setitem__(0, now[0] + 10), step(s, total)))
    plans = []
    monkeypatch.setattr(t.method, "on_schedule", plans.append)
    result = t.train(max_minutes=2)
    # 120 s / 20 s per epoch = 6 epochs, whether the recipe planned fewer (3) or more (100)
    assert t.planned_epochs == 6 and result["finished"] and (t.step, t.epoch) == (12, 6)
    logs = [json.loads(l) for l in open(tmp_path / "run" / "log.jsonl")]
    assert logs[-1]["step"] == 12 and logs[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # the cosine ended
    assert [r["planned_epochs"] for r in logs if "planned_epochs" in r] == [6]
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT)["planned_epochs"] == 6
    assert plans == ([100, 6] if planned == 100 else [3, 6])  # the method heard every plan


def test_first_epoch_estimate_leaves_out_the_compilation_of_its_first_steps():
    from sslspeaker.training.trainer import WARM_STEPS, _Run, epoch_estimate

    # a cold compile cache: the first step took 150 s, every later one 1 s; an epoch is 35 steps
    run = _Run(None, 6.0, None, True, epoch_t0=0.0, epoch_step0=0)
    run.warm = (150.0 + WARM_STEPS - 1, WARM_STEPS)  # the clock after WARM_STEPS steps
    now = 150.0 + 34
    assert epoch_estimate(now, run, 35, 35) == pytest.approx(35.0)  # 30 steps in 30 s: 1 s/step, not 184/35
    run.epoch_seconds.append(35.0)
    run.epoch_t0, run.epoch_step0 = now, 35  # a later epoch: its whole window (it includes epoch-end work)
    assert epoch_estimate(now + 40, run, 70, 35) == pytest.approx(40.0)
    short = _Run(None, 6.0, None, True, epoch_t0=0.0, epoch_step0=0)
    short.warm = (154.0, WARM_STEPS)  # too few steps after the warm-up to time: the whole window
    assert epoch_estimate(156.0, short, WARM_STEPS + 2, 7) == pytest.approx(156.0)


def test_warmup_fraction_follows_the_planned_steps():
    from sslspeaker.training.build import build_scheduler

    total = [100]
    cfg = load_config(None, ["optim.lr=1.0", "optim.warmup_fraction=0.1", "optim.schedule=constant"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(cfg, opt, lambda: total[0])
    assert opt.param_groups[0]["lr"] == pytest.approx(1 / 10)  # step 0 of a 10-step warm-up
    total[0] = 40  # re-planned: the warm-up shrinks to 4 steps
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2 / 4)
    for _ in range(3):  # steps 2, 3, 4: the warm-up ends at step 4
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    total[0] = 1000  # a longer re-plan after the warm-up ended must not send the LR back into it (5/100)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    # the ended warm-up travels with the state (a resumed run keeps it), and no callable is saved
    state = sched.state_dict()
    assert state["warmup_len"] == 4 and not any(callable(v) for v in state.values())
    old = {k if k != "warmup_len" else "warmup_kept": v for k, v in state.items()}  # a checkpoint of fc340bf
    for saved in (state, old):
        opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        resumed = build_scheduler(cfg, opt2, lambda: 1000)
        resumed.load_state_dict(saved)
        opt2.step()
        resumed.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(1.0) and resumed.last_epoch == 6
    for bad in (["optim.warmup_fraction=1.0"], ["optim.warmup_fraction=0.1", "optim.warmup_steps=5"]):
        with pytest.raises(ConfigError, match="optim.warmup_fraction"):
            build_scheduler(load_config(None, bad), opt, lambda: 10)


@pytest.mark.parametrize("native", [True, False])
def test_bf16_falls_back_to_fp32_on_a_cpu_without_native_bf16(corpus, tmp_path, monkeypatch, native):
    # On an AVX2 CPU oneDNN emulates bf16: a Fast ResNet-34 step took 11x longer than fp32 (measured).
    import sslspeaker.training.trainer as tr

    monkeypatch.setattr(tr, "cpu_has_fast_bf16", lambda: native)
    t = Trainer(make_cfg(corpus, "train.precision=bf16", "train.device=cpu"), tmp_path / "run")
    assert t.precision == ("bf16" if native else "fp32")
    events = [json.loads(l).get("event", "") for l in open(tmp_path / "run" / "log.jsonl")] \
        if (tmp_path / "run" / "log.jsonl").exists() else []
    assert any("runs as fp32" in e for e in events) == (not native)
    with pytest.raises(ConfigError, match="train.precision='fp8'"):
        tr.effective_precision("fp8", torch.device("cpu"))


def test_bandlimit_option_builds_the_channel_augmentation(corpus, tmp_path):
    from sslspeaker.training.build import build_augmenter

    assert build_augmenter(make_cfg(corpus, "augment.mode=none"), 0) is None
    alone = build_augmenter(make_cfg(corpus, "augment.mode=none", "augment.bandlimit=1.0",
                                     "augment.bandlimit_hz=[3000, 3000]"), 0)
    assert alone.mode == "none" and alone.noise_bank is None and alone.draw(100).cutoff_hz == 3000.0
    both = build_augmenter(make_cfg(corpus, "augment.bandlimit=0.5"), 0)
    assert both.mode == "N|R" and both.config.bandlimit == 0.5 and both.config.bandlimit_hz == (3400.0, 4000.0)
    eq = build_augmenter(make_cfg(corpus, "augment.mode=none", "augment.eq=1.0", "augment.eq_db=2.0"), 0)
    assert eq.config.eq == 1.0 and eq.config.eq_db == 2.0 and eq.draw(100).eq is not None
    with pytest.raises(ConfigError, match=r"augment\.bandlimit must be in \[0, 1\], got 2"):
        build_augmenter(make_cfg(corpus, "augment.bandlimit=2"), 0)


OLD_CHECKPOINTS = os.path.join(os.path.dirname(__file__), "data")


@pytest.mark.parametrize("name", ["moco", "dino"])
def test_checkpoint_written_by_the_old_code_loads_and_resumes(name, corpus, tmp_path):
    """tests/data/old_*_checkpoint.pt: 3 steps of a tiny run written by the code before the method options
    and the MoCo template (commit 376c79f). Its state-dict keys are today's, and the run resumes to its end."""
    from sslspeaker.training.checkpoint import save_checkpoint

    old = load_checkpoint(os.path.join(OLD_CHECKPOINTS, f"old_{name}_checkpoint.pt"))
    old["config"]["data"]["train"] = [{"manifest": str(corpus / "train.csv"), "root": None, "category": None}]
    save_checkpoint(tmp_path / CHECKPOINT, old)
    resumed = Trainer(make_cfg(corpus), tmp_path, resume=True)  # the checkpoint's config, not this one
    assert resumed.cfg.method.name == name and (resumed.step, resumed.epoch, resumed.batch_in_epoch) == (3, 1, 1)
    state = {k: v.clone() for k, v in resumed.method.state_dict().items()}
    assert list(state) == list(old["method"])
    assert all(torch.equal(state[k], v) for k, v in old["method"].items())
    result = resumed.train()
    assert (result["step"], result["epoch"], result["finished"]) == (6, 3, True)
    moved = [k for k, v in resumed.method.state_dict().items() if k.startswith("key_") and not torch.equal(v, state[k])]
    assert moved  # the momentum copies kept moving after the resume
    groups = resumed.optimizer.param_groups  # trained with decay on every parameter: resumed so
    assert len(groups) == 1 and groups[0]["weight_decay"] == old["config"]["optim"]["weight_decay"]


def test_weight_decay_spares_biases_norms_scalars_and_what_the_method_names(corpus, tmp_path):
    from sslspeaker.methods.dino import DINO
    from sslspeaker.training.build import build_optimizer

    t = Trainer(make_cfg(corpus, "optim.weight_decay=0.01"), tmp_path / "moco")
    decay, spared = t.optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and spared["weight_decay"] == 0.0
    names = {id(p): n for n, p in t.method.named_parameters()}
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim <= 1 for p in spared["params"])
    assert any(names[id(p)].endswith(".bias") for p in spared["params"])
    assert len(decay["params"]) + len(spared["params"]) == sum(p.requires_grad for p in t.method.parameters())
    dino = DINO(t.method.encoder, out_dim=16, hidden_dim=12, bottleneck_dim=6)
    opt = build_optimizer(t.cfg, dino)
    last = {id(p) for p in dino.head.last_layer.parameters() if p.requires_grad}
    assert last and last <= {id(p) for p in opt.param_groups[1]["params"]}  # DINO's prototypes: no decay
    assert len(build_optimizer(make_cfg(corpus, "optim.decay_all=true"), dino).param_groups) == 1


def test_log_records_carry_wall_clock_seconds(corpus, tmp_path, monkeypatch):
    import types

    import sslspeaker.training.trainer as trainer_mod

    now = [100.0]  # a fake clock: the run is set up at 100 s and every training step costs 10 s
    monkeypatch.setattr(trainer_mod, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    t = Trainer(make_cfg(corpus, "train.epochs=1", "augment.mode=none"), tmp_path / "run")
    step = t.method.after_step
    monkeypatch.setattr(t.method, "after_step", lambda s, total: (now.__setitem__(0, now[0] + 10), step(s, total)))
    t.train()
    logs = [json.loads(line) for line in open(tmp_path / "run" / "log.jsonl")]
    steps = [r for r in logs if "loss" in r]
    assert len(steps) == t.step and t.step >= 2
    assert [r["wall_s"] for r in steps] == [10.0 * r["step"] for r in steps]  # seconds since the set-up
    assert all(isinstance(r["time"], str) and r["time"].endswith("Z") for r in logs)
