"""Training throughput of MoCo + Fast ResNet-34 (2-view examples/s) through the real trainer.

Levers measured one at a time on the same data: fp32 default layout, channels-last,
channels-last + bf16 autocast, + torch.compile; and, for the best setting, the trainer fed
from pre-computed (already cropped and augmented) tensors, so the ratio shows whether the
on-the-fly data path keeps up. Achieved GFLOP/s counts the model's forward and backward
FLOPs (torch's FlopCounterMode) over the measured steps.
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from sslspeaker.config import load_config
from sslspeaker.training.trainer import Trainer

from _record import record, table

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "moco_speechocean762.yaml"


class Precomputed(torch.utils.data.Dataset):
    """The trainer's own items (augmented, wherever the recipe augments), computed once and then
    served from memory."""

    def __init__(self, ds, n: int, augmenter=None):
        self.items = [ds[(0, i)] for i in range(n)]
        if augmenter is not None:  # the recipe augments on the device: do it here, once
            rng = np.random.default_rng(0)
            for it in self.items:
                it["wave"] = augmenter.augment_views(it["wave"][None], rng)[0]
        self.n = len(ds)

    def __len__(self):
        return self.n

    def __getitem__(self, key):
        return self.items[key[1] % len(self.items)]


def step_flops(trainer: Trainer, batch: int) -> float:
    """FLOPs of one training step (method forward + backward) on one batch."""
    wave = torch.randn(batch, trainer.cfg.data.n_views, int(trainer.cfg.data.crop_seconds * 16000))
    feats = trainer._features(wave)
    with FlopCounterMode(display=False) as counter:
        loss, _ = trainer.method(feats)
        loss.backward()
    trainer.optimizer.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def make_trainer(overrides: list[str], out: str, precomputed: bool = False) -> Trainer:
    trainer = Trainer(load_config(RECIPE, overrides), out)
    if precomputed:
        on_device = trainer.cfg.augment.on_device
        trainer.dataset = Precomputed(trainer.dataset, trainer.cfg.train.batch_size * 4,
                                      trainer.augmenter if on_device else None)
        trainer.cfg.data.workers = 0
        trainer.cfg.augment.on_device = False
    return trainer


def timed_steps(trainer: Trainer, steps: int) -> float:
    t0 = time.perf_counter()
    trainer.train(stop_after_steps=trainer.step + steps)
    return time.perf_counter() - t0


def rates(trainer: Trainer, flops: float, steps: int, elapsed: float) -> dict:
    b = trainer.cfg.train.batch_size
    return {"examples/s": round(steps * b / elapsed, 1), "GFLOP/s": round(flops * steps / elapsed / 1e9, 1),
            "GFLOP/example": round(flops / b / 1e9, 2)}


def measure(overrides: list[str], steps: int, warmup: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(overrides, out)
        flops = step_flops(trainer, trainer.cfg.train.batch_size)
        timed_steps(trainer, warmup)  # start-up, audio cache, compile, allocator warm-up
        # the precision it ran in: bf16 falls back to fp32 on a CPU without native bf16
        return {**rates(trainer, flops, steps, timed_steps(trainer, steps)), "ran as": trainer.precision}


def profile(overrides: list[str], steps: int, warmup: int, top: int = 12) -> str:
    """Where a step's time goes: torch.profiler over ``steps`` steps, the ops with the most self
    time on the device and on the host (launch-bound code shows host time far above device time)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    with tempfile.TemporaryDirectory() as out:
        trainer = make_trainer(overrides, out)
        timed_steps(trainer, warmup)
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with torch_profile(activities=acts) as prof:
            wall = timed_steps(trainer, steps)
    ev = prof.key_averages()
    dev_key = "self_device_time_total" if torch.cuda.is_available() else "self_cpu_time_total"
    kernels = [e for e in ev if e.device_type.name == "CUDA"]  # the ops' rows repeat their kernels' time
    dev_total = sum(e.self_device_time_total for e in kernels) / 1e3
    cpu_total = sum(e.self_cpu_time_total for e in ev) / 1e3
    head = f"{steps} profiled steps: {1e3 * wall / steps:.1f} ms per step wall, {cpu_total / steps:.1f} ms of it host self time"
    if torch.cuda.is_available():
        launches = sum(e.count for e in kernels) // max(1, steps)
        head += f"; {dev_total / steps:.1f} ms device time per step in {launches} kernels and copies"
    head += "."
    return head + "\n\n" + "```\n" + ev.table(sort_by=dev_key, row_limit=top, max_name_column_width=48) + "```\n"


def measure_ratio(overrides: list[str], rounds: int, steps: int, warmup: int) -> tuple[dict, dict, list[float]]:
    """On-the-fly vs pre-computed data, alternating blocks of ``steps`` so that the machine's
    speed drifts (this VM's matmul rate wanders by +-30 % within a minute) hit both alike;
    the ratio is the median over rounds."""
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        live, pre = make_trainer(overrides, a), make_trainer(overrides, b, precomputed=True)
        flops = step_flops(live, live.cfg.train.batch_size)
        timed_steps(live, warmup), timed_steps(pre, warmup)
        t_live, t_pre = [], []
        for _ in range(rounds):
            t_live.append(timed_steps(live, steps))
            t_pre.append(timed_steps(pre, steps))
    ratios = sorted(p / q for p, q in zip(t_pre, t_live))
    return (rates(live, flops, steps * rounds, sum(t_live)), rates(pre, flops, steps * rounds, sum(t_pre)),
            ratios)


DATA_PATHS = {  # how the on-the-fly data reaches the trainer
    "worker_disk": ("1 worker process, crops read from disk", ["data.workers=1", "data.cache_gb=0"]),
    "worker_cache": ("1 worker process, decoded audio in memory", ["data.workers=1"]),
    "main_cache": ("training process, per item, audio in memory", ["data.workers=0"]),
    "main_batched": ("training process, batched augmentation, audio in memory",
                     ["data.workers=0", "augment.on_device=true"]),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4, help="alternating on-the-fly/pre-computed blocks per data path")
    ap.add_argument("--levers", default="fp32,cl,cl_bf16,cl_bf16_compile")
    ap.add_argument("--data-paths", default=",".join(DATA_PATHS))
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the issue's machine: 2 cores)")
    ap.add_argument("--profile", type=int, default=0, help="also profile this many steps of the best setting")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    base = ["train.batch_size=64", "data.crop_seconds=1.8", "features.n_mels=40", f"train.threads={args.threads}",
            "validation.trials=null", "train.checkpoint_every=0", "train.log_every=1000"]
    levers = {
        "fp32": ["train.precision=fp32", "train.channels_last=false"],
        "cl": ["train.precision=fp32", "train.channels_last=true"],
        "cl_bf16": ["train.precision=bf16", "train.channels_last=true"],
        "cl_bf16_compile": ["train.precision=bf16", "train.channels_last=true", "train.compile=true"],
        "cl_compile": ["train.precision=fp32", "train.channels_last=true", "train.compile=true"],
    }
    names = {"fp32": "fp32, default layout", "cl": "fp32, channels-last", "cl_bf16": "bf16 autocast, channels-last",
             "cl_bf16_compile": "bf16, channels-last, torch.compile", "cl_compile": "fp32, channels-last, torch.compile"}
    rows = []
    chosen = [k for k in args.levers.split(",") if k]
    for key in chosen:
        r = measure(base + levers[key], args.steps, args.warmup)
        rows.append({"setting": names[key], **r})
        print(rows[-1], flush=True)
    best = max(zip(chosen, rows), key=lambda kr: kr[1]["examples/s"])[0] if chosen else "cl_bf16"
    data_rows = []
    for key in [k for k in args.data_paths.split(",") if k]:
        live, pre, ratios = measure_ratio(base + levers[best] + DATA_PATHS[key][1], args.rounds, args.steps,
                                          args.warmup)
        data_rows.append({"data path": DATA_PATHS[key][0], "on the fly, examples/s": live["examples/s"],
                          "pre-computed, examples/s": pre["examples/s"],
                          "ratio (median of rounds)": f"{100 * ratios[len(ratios) // 2]:.0f} %",
                          "ratio range": f"{100 * ratios[0]:.0f}-{100 * ratios[-1]:.0f} %"})
        print(data_rows[-1], flush=True)
    body = ""
    if rows:
        body += table(rows, ["setting", "ran as", "examples/s", "GFLOP/s", "GFLOP/example"])
        body += (f"\n\nMoCo + Fast ResNet-34 (256-d), batch 64, two 1.8-s crops, 40 log-mel bands, the development "
                 f"recipe's N|R augmentation and data path; {args.steps} timed steps after {args.warmup} warm-up "
                 "steps. Peer reference (issue 3): sslsv MoCo 22.3 examples/s, about 80 GFLOP/s; sslsv cannot run "
                 "here (its PyPI release needs torchaudio, which has no CPU build on this machine), so the "
                 "comparison is with that reference figure.\n\n")
    if data_rows:
        body += table(data_rows, list(data_rows[0]))
        body += (f"\n\nData path vs the same training fed from pre-computed tensors ({names[best]}; target >= 90 %): "
                 f"{args.rounds} rounds alternating {args.steps} on-the-fly steps with {args.steps} pre-computed "
                 "steps, because a VM's speed drifts (+-30 % within a minute on the 2-core CPU); the ratio is the median of "
                 "the per-round ratios. Training pool: speechocean762 train.csv + LibriSpeech clips from the data root "
                 "(FLAC + Opus; on a GPU machine, the all-Opus copy of bench/device_data.py).")
    if args.profile:
        body += "\n\nProfile of the best setting (" + names[best] + "): " + profile(base + levers[best], args.profile, args.warmup)
    if not args.no_record and torch.cuda.is_available():  # the trainer's device "auto" picked the GPU
        record("train_throughput_gpu", f"Training throughput on a GPU ({torch.cuda.get_device_name(0)})", body)
    elif not args.no_record:
        record("train_throughput", "Training throughput, MoCo + Fast ResNet-34 (2 CPU cores)", body)
    else:
        print(body)


if __name__ == "__main__":
    main()
