"""Training under faults (issue #18): non-finite audio and losses, a busy or finished run folder,
a full disk, resume overrides, missing files, bad checkpoints. Each case ends in a clean stop or
a one-line refusal, and no state is lost or silently wrong."""

import errno
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import write_audio
from sslspeaker.cli import main
from sslspeaker.config import ConfigError, load_config
from sslspeaker.data.manifest import Entry, write_manifest
from sslspeaker.training import checkpoint as checkpoint_module
from sslspeaker.training.checkpoint import load_checkpoint, nonfinite_tensors, save_checkpoint
from sslspeaker.training.preflight import warn_long_crop
from sslspeaker.training.run_folder import claim_run_folder
from sslspeaker.training.trainer import CHECKPOINT, Trainer, TrainingStopped, train
from sslspeaker.training.transaction import BufferSnapshot


def write_nan_audio(path, seconds=0.8, share=1.0):
    """A float WAV whose first ``share`` of samples are NaN (the rest a quiet tone)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    x = 0.1 * np.sin(np.arange(int(seconds * 16000)) * 0.05).astype(np.float32)
    x[: int(share * x.size)] = np.nan
    sf.write(str(path), x, 16000, subtype="FLOAT")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    good = []
    for i in range(8):
        write_audio(root / f"s{i % 2}" / f"u{i}.wav", seconds=0.6 + 0.05 * i, freq=150 + 50 * i)
        good.append(Entry(str(root / f"s{i % 2}" / f"u{i}.wav"), None, 0.6 + 0.05 * i))
    write_manifest(root / "train.csv", good)
    for i in range(8):
        write_nan_audio(root / "nan" / f"n{i}.wav")
    write_manifest(root / "all_nan.csv", [Entry(str(root / "nan" / f"n{i}.wav"), None, 0.8) for i in range(8)])
    write_manifest(root / "missing.csv", [Entry(str(root / "gone" / f"g{i}.wav"), None, 1.0) for i in range(20)])
    (root / "trials.txt").write_text(f"1 {good[0].path} {good[2].path}\n0 {good[0].path} {good[1].path}\n")
    (root / "bad_trials.txt").write_text(f"1 {good[0].path} {root / 'nowhere.wav'}\n")
    return root


def options(corpus, manifest="train.csv", *extra):
    return [f"data.train={corpus / manifest}", "data.crop_seconds=0.5", "data.workers=0", "model.encoder=tiny_test",
            "method.options={queue_size: 16}", "train.batch_size=4", "train.epochs=2", "train.checkpoint_every=1",
            "train.log_every=1", "train.threads=1", "train.max_nonfinite=3", *extra]


def make_cfg(corpus, *extra, manifest="train.csv"):
    return load_config(None, options(corpus, manifest, *extra))


def cli(corpus, out, *args, manifest="train.csv", extra=(), capsys=None):
    """(exit code, the last line on stderr: the command's one-line error, after any progress bar)."""
    rc = main(["train", str(corpus / "recipe.yaml"), *options(corpus, manifest, *extra), "--out", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines() if capsys is not None else []
    return rc, (err[-1] if err else "")


@pytest.fixture(autouse=True)
def _recipe(corpus):
    (corpus / "recipe.yaml").write_text("train: {seed: 3}\n")


@pytest.fixture(autouse=True)
def _own_rng():
    """A Trainer seeds (a resume restores) the global RNGs: later test files get back the states they had."""
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng():
        yield
    np.random.set_state(np_state)
    random.setstate(py_state)


def state_of(trainer):
    return {k: v.clone() for k, v in trainer.method.state_dict().items()}


def poisoned(forward):
    """``forward`` run for real (its buffer updates happen), its loss made NaN."""

    def run(feats, labels=None, **extras):
        loss, logs = forward(feats, labels, **extras)
        return loss * float("nan"), logs

    return run


def all_finite(path):
    return not list(nonfinite_tensors(load_checkpoint(path)))


# ---- item 1: a skipped step leaves no trace ------------------------------------------------------
DINO = ["method.name=dino", "method.options={out_dim: 16, hidden_dim: 8, bottleneck_dim: 4}",
        "data.local_crop_seconds=0.3", "data.n_local_views=2"]


@pytest.mark.parametrize("method", ["moco", "dino"])
def test_a_skipped_step_changes_no_buffer(corpus, tmp_path, method):
    t = Trainer(make_cfg(corpus, "train.max_nonfinite=1", *(DINO if method == "dino" else [])), tmp_path)
    t.train(stop_after_steps=1)
    before = state_of(t)
    t.forward = poisoned(t.method.forward)
    with pytest.raises(TrainingStopped, match="1 non-finite losses in a row"):
        t.train()
    after = state_of(t)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []
    watched = ["encoder.bn.running_mean", "encoder.bn.num_batches_tracked",
               *(["queue", "queue_ptr", "key_encoder.bn.running_mean"] if method == "moco" else ["center"])]
    assert set(watched) <= set(before)


def test_buffer_snapshot_restores_what_a_forward_pass_mutates():
    m = torch.nn.BatchNorm1d(3)
    m.register_buffer("queue", torch.zeros(4, 3))
    snap = BufferSnapshot(m)
    snap.take()
    m(torch.randn(6, 3))
    m.queue += 1.0
    assert float(m.running_mean.abs().sum()) > 0 and int(m.num_batches_tracked) == 1
    snap.restore()
    assert torch.equal(m.running_mean, torch.zeros(3)) and torch.equal(m.running_var, torch.ones(3))
    assert int(m.num_batches_tracked) == 0 and torch.equal(m.queue, torch.zeros(4, 3))


def test_one_nan_file_leaves_every_checkpoint_finite(corpus, tmp_path):
    entries = [Entry(str(corpus / f"s{i % 2}" / f"u{i}.wav"), None, 0.6) for i in range(7)]
    entries.append(Entry(str(corpus / "nan" / "n0.wav"), None, 0.8))
    write_manifest(tmp_path / "mixed.csv", entries)
    t = Trainer(load_config(None, options(corpus, "train.csv", f"data.train={tmp_path / 'mixed.csv'}",
                                          "train.epochs=3")), tmp_path / "run")
    result = t.train()
    assert result["finished"] and result["step"] >= 3
    assert all_finite(tmp_path / "run" / CHECKPOINT)


def test_all_nan_pool_stops_saying_no_checkpoint_was_written(corpus, tmp_path, capsys):
    rc, err = cli(corpus, tmp_path / "run", manifest="all_nan.csv",
                  extra=["data.cache_gb=0", "train.max_nonfinite=2"], capsys=capsys)
    assert not (tmp_path / "run" / CHECKPOINT).exists()
    # the data layer refuses non-finite files itself (naming them); else the losses stop the run
    assert rc == 3 and "no checkpoint was written" in err
    assert "2 non-finite losses in a row" in err or ("unreadable files in a row" in err and "non-finite" in err)


def test_non_finite_losses_from_the_start_say_there_is_no_checkpoint(corpus, tmp_path):
    t = Trainer(make_cfg(corpus, "train.max_nonfinite=2"), tmp_path)
    t.forward = poisoned(t.method.forward)
    with pytest.raises(TrainingStopped, match=r"2 non-finite losses in a row at step 0; no checkpoint was written"):
        t.train()
    assert not (tmp_path / CHECKPOINT).exists()


def test_nan_after_good_steps_names_a_finite_last_good_checkpoint(corpus, tmp_path):
    t = Trainer(make_cfg(corpus, "train.max_nonfinite=2", "train.epochs=3"), tmp_path)
    t.train(stop_after_steps=2)
    t.forward = poisoned(t.method.forward)
    with pytest.raises(TrainingStopped, match=r"last good checkpoint: step 2 \("):
        t.train()
    assert load_checkpoint(tmp_path / CHECKPOINT)["position"]["step"] == 2 and all_finite(tmp_path / CHECKPOINT)


def test_a_non_finite_state_is_never_saved(corpus, tmp_path):
    t = Trainer(make_cfg(corpus), tmp_path)
    t.train(stop_after_steps=1)
    good = (tmp_path / CHECKPOINT).read_bytes()
    with torch.no_grad():
        t.method.encoder.fc.weight[0, 0] = float("inf")
    with pytest.raises(TrainingStopped, match=r"non-finite values in 1 tensors at step 1 "
                                              r"\(method\.encoder\.fc\.weight\): checkpoint not written; "
                                              r"last good checkpoint: step 1"):
        t.save()
    assert (tmp_path / CHECKPOINT).read_bytes() == good


def test_nonfinite_tensors_names_each_bad_float_tensor():
    tree = {"a": torch.tensor([1.0, float("nan")]), "b": [torch.ones(2), torch.tensor(float("-inf"))],
            "n": torch.tensor([3]), "ok": {"c": torch.zeros(2)}}
    assert list(nonfinite_tensors(tree)) == ["a", "b.1"]
    assert [k for k, v in {"a": tree["a"], "b1": tree["b"][1], "c": tree["ok"]["c"]}.items()
            if not torch.isfinite(v).all()] == ["a", "b1"]


# ---- item 2: a plain re-run never replaces a run ------------------------------------------------
def test_rerun_without_resume_refuses_and_force_keeps_the_old_run(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(corpus, run, capsys=capsys)[0] == 0
    old = (run / CHECKPOINT).read_bytes()
    rc, err = cli(corpus, run, capsys=capsys)
    assert rc == 2 and err == f"error: {run} has a checkpoint at step 4: --resume to continue, --force to start over"
    assert (run / CHECKPOINT).read_bytes() == old
    rc, _ = cli(corpus, run, "--force", extra=["train.epochs=1"], capsys=capsys)
    assert rc == 0 and load_checkpoint(run / CHECKPOINT)["position"]["step"] == 2
    aside = [p for p in run.iterdir() if p.name.startswith("replaced-")]
    assert len(aside) == 1 and (aside[0] / CHECKPOINT).read_bytes() == old
    assert (aside[0] / "log.jsonl").is_file() and (aside[0] / "config.yaml").is_file()


# ---- item 3: one process per run folder ---------------------------------------------------------
def test_a_second_run_on_a_held_folder_is_refused_naming_the_pid(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom sslspeaker.training.run_folder import claim_run_folder\n"
        f"with claim_run_folder({str(run)!r}, resume=False):\n    print('held', flush=True)\n    time.sleep(60)\n")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == "held"
        rc, err = cli(corpus, run, capsys=capsys)
        assert rc == 2 and err == f"error: {run} is in use by another training process (pid {holder.pid})"
    finally:
        holder.kill()  # like kill -9: the kernel releases the lock
        holder.wait()
    assert cli(corpus, run, extra=["train.epochs=1"], capsys=capsys)[0] == 0  # not left stuck


def test_the_lock_is_held_against_this_process_too(tmp_path):
    with claim_run_folder(tmp_path, resume=False):
        with pytest.raises(ValueError, match=rf"in use by another training process \(pid {os.getpid()}\)"):
            with claim_run_folder(tmp_path, resume=True):
                pass
    with claim_run_folder(tmp_path, resume=True):  # released at the end of the block
        pass


# ---- item 4: a full disk -----------------------------------------------------------------------
def test_disk_full_stops_in_one_line_keeps_the_last_checkpoint_and_resumes(corpus, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_open, writes = checkpoint_module.atomic_open, []

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def filling(path, mode="wb"):
        writes.append(path)
        if len(writes) <= 2:
            return real_open(path, mode)

        class Ctx:
            def __enter__(self):
                self.inner = real_open(path, mode)
                return FullDisk(self.inner.__enter__())

            def __exit__(self, *exc):
                return self.inner.__exit__(*exc)

        return Ctx()

    monkeypatch.setattr(checkpoint_module, "atomic_open", filling)
    rc, err = cli(corpus, run, capsys=capsys)
    assert rc == 3 and err == (f"stopped: no space left on the device of {run} writing the checkpoint; "
                   f"last good checkpoint: step 2 ({run / CHECKPOINT})")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.pt"]  # no temp file left
    assert load_checkpoint(run / CHECKPOINT)["position"]["step"] == 2
    monkeypatch.setattr(checkpoint_module, "atomic_open", real_open)  # space freed
    stale = run / "checkpoints" / ".last.pt.tmp999999999"
    stale.write_bytes(b"partial")
    assert cli(corpus, run, "--resume", capsys=capsys)[0] == 0
    assert load_checkpoint(run / CHECKPOINT)["position"]["step"] == 4 and not stale.exists()


# ---- item 5: resume overrides ------------------------------------------------------------------
def test_resume_applies_safe_overrides_records_them_and_refuses_the_rest(corpus, tmp_path):
    Trainer(make_cfg(corpus), tmp_path).train(stop_after_steps=3)
    with pytest.raises(ConfigError, match=r"--resume: data\.crop_seconds, optim\.lr cannot change"):
        train(make_cfg(corpus), tmp_path, resume=True, overrides=["data.crop_seconds=0.4", "optim.lr=0.5"])
    result = train(make_cfg(corpus), tmp_path, resume=True,
                   overrides=["train.epochs=3", "train.log_every=2", "data.crop_seconds=0.5"])  # same value: fine
    assert (result["step"], result["epoch"], result["finished"]) == (6, 3, True)
    assert load_config(tmp_path / "config.yaml").train.epochs == 3
    assert load_checkpoint(tmp_path / CHECKPOINT)["config"]["train"]["log_every"] == 2
    events = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    resume = [e for e in events if e.get("event") == "resume"]
    assert len(resume) == 1 and resume[0]["from_step"] == 3
    assert resume[0]["changed"] == {"train.epochs": [2, 3], "train.log_every": [1, 2]}
    assert all(isinstance(e["time"], str) and e["time"].endswith("Z") for e in events)
    assert [e["step"] for e in events if "loss" in e][-2:] == [4, 6]  # logged every 2 steps after the resume


def test_resume_override_refused_through_the_cli(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli(corpus, run, "--max-minutes", "0", capsys=capsys)[0] == 0
    rc, err = cli(corpus, run, "--resume", extra=["train.batch_size=2"], capsys=capsys)
    assert rc == 2 and err.startswith("error: --resume: train.batch_size cannot change in a resumed run")


# ---- item 6: validation ------------------------------------------------------------------------
def test_validation_list_naming_a_missing_file_is_refused_at_start(corpus, tmp_path, capsys):
    rc, err = cli(corpus, tmp_path / "run", extra=[f"validation.trials={corpus / 'bad_trials.txt'}"], capsys=capsys)
    assert rc == 2 and err == (f"error: validation.trials={corpus / 'bad_trials.txt'}: audio file "
                               f"{corpus / 'nowhere.wav'}: no such file")
    assert not (tmp_path / "run" / CHECKPOINT).exists()


def test_a_failing_validation_never_costs_the_training_state(corpus, tmp_path, monkeypatch):
    def broken(self):
        raise RuntimeError("scorer exploded")

    monkeypatch.setattr(Trainer, "validate", broken)
    result = Trainer(make_cfg(corpus, f"validation.trials={corpus / 'trials.txt'}"), tmp_path).train()
    assert result["finished"] and load_checkpoint(tmp_path / CHECKPOINT)["position"]["step"] == 4
    events = [json.loads(line).get("event", "") for line in open(tmp_path / "log.jsonl")]
    assert events.count("validation failed: RuntimeError: scorer exploded") == 2


def test_validation_runs_and_logs_its_eer(corpus, tmp_path):
    Trainer(make_cfg(corpus, f"validation.trials={corpus / 'trials.txt'}", "train.epochs=1"), tmp_path).train()
    eers = [json.loads(line)["eer"] for line in open(tmp_path / "log.jsonl") if '"eer"' in line]
    assert len(eers) == 1 and 0.0 <= eers[0] <= 100.0


# ---- item 11: bad checkpoints and missing training files: one line, rc 2 ------------------------
def test_bad_init_from_is_one_line(corpus, tmp_path, capsys):
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    rc, err = cli(corpus, tmp_path / "a", extra=[f"train.init_from={tmp_path / 'garbage.pt'}"], capsys=capsys)
    assert rc == 2 and err.startswith(f"error: train.init_from: {tmp_path / 'garbage.pt'}: not a ")
    rc, err = cli(corpus, tmp_path / "b", extra=["train.init_from=garbage"], capsys=capsys)
    assert rc == 2 and err == "error: train.init_from: garbage: no such checkpoint"
    torch.save({"position": 1}, tmp_path / "other.pt")
    rc, err = cli(corpus, tmp_path / "c", extra=[f"train.init_from={tmp_path / 'other.pt'}"], capsys=capsys)
    assert rc == 2 and err == (f"error: train.init_from={tmp_path / 'other.pt'}: not a training checkpoint "
                               f"(no method state)")


def test_corrupt_or_foreign_last_checkpoint_on_resume_is_one_line(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / CHECKPOINT).write_bytes(b"\x80\x04 truncated")
    rc, err = cli(corpus, run, "--resume", capsys=capsys)
    assert rc == 2 and err.startswith(f"error: {run / CHECKPOINT}: ") and "\n" not in err.strip()
    assert "not a loadable sslspeaker checkpoint" in err or "refused" in err
    save_checkpoint(run / CHECKPOINT, {"method": {}})
    rc, err = cli(corpus, run, "--resume", capsys=capsys)
    assert rc == 2 and err == (f"error: {run / CHECKPOINT}: not a resumable training checkpoint "
                               f"(no config, optimizer, scheduler, scaler, rng, position, history)")


def test_a_manifest_of_missing_files_is_one_line(corpus, tmp_path, capsys):
    rc, err = cli(corpus, tmp_path / "run", manifest="missing.csv", capsys=capsys)
    assert rc == 2 and err == (f"error: data.train: none of the 20 training files checked exists "
                               f"(first: {corpus / 'gone' / 'g0.wav'})")


def test_cuda_without_cuda_and_an_empty_pool_are_one_line(corpus, tmp_path, capsys):
    rc, err = cli(corpus, tmp_path / "a", extra=["data.train=[]"], capsys=capsys)
    assert rc == 2 and err == "error: data.train=[]: expected at least one manifest or folder of training audio"
    if not torch.cuda.is_available():
        rc, err = cli(corpus, tmp_path / "b", extra=["train.device=cuda"], capsys=capsys)
        assert rc == 2 and err == "error: train.device=cuda: CUDA is not available here (use auto or cpu)"


def test_a_crop_longer_than_most_files_warns(corpus, tmp_path):
    entries = [Entry(f"f{i}", None, d) for i, d in enumerate([1.0, 2.0, 3.0, 4.0, 40.0])]
    msg = warn_long_crop(entries, 30.0)
    assert msg.startswith("data.crop_seconds=30.0 is longer than 80% of the training files (median 3.00 s)")
    assert warn_long_crop(entries, 2.5) is None  # the median file is longer
    t = Trainer(make_cfg(corpus, "data.crop_seconds=5"), tmp_path)
    t.train(stop_after_steps=1)
    events = [json.loads(line).get("event", "") for line in open(tmp_path / "log.jsonl")]
    assert any(e.startswith("data.crop_seconds=5.0 is longer than 100% of the training files") for e in events)


def test_transactional_step_costs_little(corpus, tmp_path):
    """The snapshot of a tiny MoCo's buffers costs well under a step: measured, not assumed."""
    t = Trainer(make_cfg(corpus, "method.options={queue_size: 16}"), tmp_path)
    snap = BufferSnapshot(t.method)
    snap.take()
    t0 = time.perf_counter()
    for _ in range(200):
        snap.take()
    per_take = (time.perf_counter() - t0) / 200
    t0 = time.perf_counter()
    t.train(stop_after_steps=4)
    per_step = (time.perf_counter() - t0) / 4
    assert per_take < 0.05 * per_step, (per_take, per_step)
