"""The one training loop shared by every method (contrastive, momentum, distillation, supervised).

A method gets a batch of features [B, V, n_mels, frames] and returns (loss, logs); the loop
owns everything else: data order, augmentation, features, precision, clipping, schedule,
checkpoints that resume exactly, validation EER, progress and logs.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..errors import Stopped
from ..fileio import utc_now
from ..runs import RUN_CHECKPOINT
from .. import distributed as dist_utils
from ..config import Config, ConfigError, save_config, to_dict
from ..data.dataset import EpochBatchSampler, collate
from ..data.shards import ShardDataset
from ..data.manifest import read_trials
from ..data.audio import AudioError
from ..evaluation.embeddings import embed_files
from ..evaluation.scoring import metrics_from_scores, score_trials, trial_labels
from ..methods.base import EpochContext
from ..models.global_bn import convert_to_global_bn
from ..inference.checkpoint_source import encoder_name, encoder_state
from .build import TrainingParts, build_optimizer, build_parts, build_scheduler
from .checkpoint import (check_resumable, load_checkpoint, nonfinite_tensors, rng_state, save_checkpoint,
                         set_rng_state)
from .preflight import check_config, check_training_files, validation_paths, warn_long_crop
from .resume import resumed_config
from .run_folder import claim_run_folder
from .transaction import BufferSnapshot

log = logging.getLogger(__name__)
CHECKPOINT = RUN_CHECKPOINT  # the run layout is written once, in runs.py


class TrainingStopped(Stopped):
    """The run stopped itself (non-finite losses or state, a failed checkpoint write); the last good
    checkpoint is intact."""


def _device(cfg: Config) -> torch.device:
    if cfg.train.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(cfg.train.device)


def _init_distributed(device: torch.device) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")


def cpu_has_fast_bf16() -> bool:
    """Whether oneDNN runs bf16 natively here (AVX-512 and up); on AVX2 it emulates it, ~10x slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def effective_precision(requested: str, device: torch.device) -> str:
    """The precision training runs in: bf16 on a CPU without native bf16 falls back to fp32."""
    if requested not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision={requested!r}: expected fp32, bf16 or fp16")
    if requested == "bf16" and device.type == "cpu" and not cpu_has_fast_bf16():
        return "fp32"
    return requested


def _centred_crop(entry, frames: int) -> np.ndarray:
    """``frames`` samples from the middle of ``entry``'s audio (tiled if shorter); zeros if unreadable."""
    from ..data.audio import read_audio
    from ..data.crops import tile_to

    start = max(0, (int(entry.duration * 16000) - frames) // 2)
    try:
        return tile_to(read_audio(entry.path, start, frames), frames)
    except Exception:  # unreadable: a zero row keeps indices aligned; it is never a positive
        return np.zeros(frames, np.float32)


def _autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])


def _single_threaded(_worker_id: int) -> None:
    # A data worker beside a training process that already uses every core: more threads here
    # only oversubscribe the CPU (OpenMP spin-waits), slowing both.
    torch.set_num_threads(1)


WARM_STEPS = 5  # steps after which a run's step time no longer includes compilation and first-call costs


def epoch_estimate(now: float, run: "_Run", step: int, steps_per_epoch: int) -> float:
    """Seconds per epoch = elapsed · steps_per_epoch / steps; over the steps after the warm-up on a run's first
    epoch (its first steps pay compilation: a cold cache made a 35-step epoch look like 195 s, not 25 s)."""
    t0, s0 = run.epoch_t0, run.epoch_step0
    if not run.epoch_seconds and run.warm is not None and step - run.warm[1] >= WARM_STEPS:
        t0, s0 = run.warm
    return (now - t0) * steps_per_epoch / max(1, step - s0)


@dataclass
class _Run:
    """The bookkeeping of one ``Trainer.train`` call."""

    bar: Any
    max_minutes: float | None
    stop_after_steps: int | None
    fit: bool  # re-plan the epochs to the time budget (train.fit_to_budget)
    start: float = field(default_factory=lambda: time.perf_counter())
    nonfinite: int = 0  # non-finite losses in a row
    examples: int = 0
    rate_t0: float = field(default_factory=lambda: time.perf_counter())
    epoch_seconds: list[float] = field(default_factory=list)  # wall time per full epoch, epoch-end work included
    epoch_t0: float = field(default_factory=lambda: time.perf_counter())
    epoch_step0: int = 0
    warm: tuple[float, int] | None = None  # (time, step) once the first epoch's WARM_STEPS steps are done
    stopped: bool = False

    def over(self, step: int) -> bool:
        """The time or step limit is reached."""
        out_of_time = self.max_minutes is not None and time.perf_counter() - self.start > 60 * self.max_minutes
        return out_of_time or (self.stop_after_steps is not None and step >= self.stop_after_steps)


class Trainer:
    def __init__(self, cfg: Config, out_dir: str | os.PathLike, resume: bool = False,
                 overrides: list[str] | None = None):
        """A resumed run keeps the checkpoint's config (not ``cfg``) with the resumable ``overrides`` applied."""
        self.t_created = time.perf_counter()  # log.jsonl's wall_s counts from here
        self.out = Path(out_dir)
        ckpt = self._checkpoint_to_resume() if resume else None
        self.cfg, self.resume_changes = resumed_config(ckpt["config"], overrides) if ckpt is not None else (cfg, {})
        check_config(self.cfg)
        self.notes: list[str] = []  # said once at the start, on the console and in log.jsonl
        self._set_up_process()
        self._take_parts(build_parts(self.cfg))
        self._set_up_model()
        self._set_up_optimisation()
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.history: list[dict] = []
        self.last_good_step: int | None = None  # the step of the last checkpoint written (or resumed from)
        if ckpt is not None:
            self._restore(ckpt)
        self._set_up_outputs()
        if ckpt is not None:
            self._log({"step": self.step, "event": "resume", "from_step": self.step, "epoch": self.epoch,
                       "batch": self.batch_in_epoch, "changed": self.resume_changes})

    # ---- set-up stages ------------------------------------------------------------------------
    def _checkpoint_to_resume(self) -> dict:
        if not (self.out / CHECKPOINT).is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.out / CHECKPOINT}")
        return check_resumable(self.out / CHECKPOINT, load_checkpoint(self.out / CHECKPOINT))

    def _set_up_process(self) -> None:
        """Device, precision, process group, threads and the torch seed."""
        t = self.cfg.train
        self.device = _device(self.cfg)
        self.precision = effective_precision(t.precision, self.device)
        _init_distributed(self.device)
        self.rank, self.world = dist_utils.get_rank(), dist_utils.get_world_size()
        if t.threads:
            torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed)

    def _take_parts(self, parts: TrainingParts) -> None:
        """The built parts, the batch order over the dataset and the epoch plan."""
        t = self.cfg.train
        self.augmenter, self.method, self.dataset = parts.augmenter, parts.method, parts.dataset
        n = len(self.dataset.entries)
        self.sampler = self._batch_order(n)
        self.steps_per_epoch = self.sampler.batches_per_epoch()
        self.planned_epochs = t.epochs  # re-planned from measured time under train.fit_to_budget
        self.method.on_train_start(n, t.batch_size * self.world)
        self.features = parts.features.to(self.device)
        if not isinstance(self.dataset, ShardDataset):  # shard files are checked when opened
            check_training_files(self.dataset.entries)
        long_crop = warn_long_crop(self.dataset.entries, self.cfg.data.crop_seconds)
        self.notes += [long_crop] if long_crop else []

    def _batch_order(self, n: int):
        """The rank's batches: a sampler over the files, or the stream over the shards (data/shards.py)."""
        t, d = self.cfg.train, self.cfg.data
        if not isinstance(self.dataset, ShardDataset):
            return EpochBatchSampler(n, t.batch_size, t.seed, self.rank, self.world)
        try:
            return self.dataset.stream(t.batch_size, t.seed, self.rank, self.world, d.streams, d.shuffle_buffer)
        except ValueError as exc:
            raise ConfigError(f"data.train (data.format=shards): {exc}") from None

    def _set_up_model(self) -> None:
        """Initial weights, device and memory format, DDP wrapping, compiled encoders."""
        t = self.cfg.train
        if t.init_from:
            self._init_encoder(t.init_from)
        self.method.to(self.device)
        if t.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.model = self.method
        if self.world > 1 and self.method.sync_batchnorm:
            convert_to_global_bn(self.method, self.device)  # in place: the method keeps its attributes
        if self.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.method, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                broadcast_buffers=False)
        if t.compile:
            self._compile_encoders()
        self.forward = self.model
        self._snapshot = BufferSnapshot(self.method)  # what a skipped step puts back

    def _compile_encoders(self) -> None:
        # Compile the encoders in place (state_dict keys unchanged), not the method: its queue
        # and momentum updates are in-place bookkeeping that graph capture would reorder.
        # Static shapes: training has a fixed few (global and local crops), one graph each; with
        # automatic dynamic shapes Inductor failed on DINO's two crop lengths (torch 2.13).
        copies = [target for online, target in self.method.momentum_pairs if online == "encoder"]
        for name in ("encoder", *copies):
            getattr(self.method, name).compile(dynamic=False)

    def _set_up_optimisation(self) -> None:
        self.optimizer = build_optimizer(self.cfg, self.method)
        self.scheduler = build_scheduler(self.cfg, self.optimizer, lambda: self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def _set_up_outputs(self) -> None:
        """The run folder, its resolved config, TensorBoard, and a note when the precision fell back."""
        t = self.cfg.train
        self.out.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            save_config(self.cfg, self.out / "config.yaml")
        self._tb = self._tensorboard()
        if self.precision != t.precision:
            msg = (f"train.precision={t.precision} runs as {self.precision}: no native {t.precision} on this "
                   f"{torch.backends.cpu.get_cpu_capability()} CPU, where it runs ~10x slower than fp32")
            log.warning(msg)
            self.notes.append(msg)
        for msg in self.notes:
            self._log({"step": self.step, "event": msg})

    # ---- state ------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.planned_epochs

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _init_encoder(self, path: str) -> None:
        try:
            state = load_checkpoint(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"train.init_from: {exc}") from None
        if not isinstance(state, dict) or not isinstance(state.get("method"), dict):
            raise ConfigError(f"train.init_from={path}: not a training checkpoint (no method state)")
        try:  # the source run's inference encoder (DINO: its teacher)
            enc = encoder_state(state, Path(path), encoder_name(state, Path(path)))
        except ValueError as exc:
            raise ConfigError(f"train.init_from={path}: {exc}") from None
        try:
            missing, unexpected = self.method.encoder.load_state_dict(enc, strict=False)
        except RuntimeError as exc:
            raise ConfigError(f"train.init_from={path}: weights do not fit this encoder "
                              f"({str(exc).splitlines()[-1].strip()[:200]})") from None
        if missing:
            raise ConfigError(f"train.init_from={path}: encoder weights missing {missing[:3]}...")
        self.method.sync_momentum_copy("encoder")  # momentum copies start from the same weights

    def state_dict(self) -> dict:
        return {
            "format": "sslspeaker-checkpoint-1",
            "config": to_dict(self.cfg),
            "method": self.method.state_dict(),
            "inference_encoder": self.method.inference_encoder_name(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "position": {"step": self.step, "epoch": self.epoch, "batch": self.batch_in_epoch},
            "planned_epochs": self.planned_epochs,
            "history": json.dumps(self.history),
        }

    def _restore(self, ckpt: dict) -> None:
        try:
            self.method.load_state_dict(ckpt["method"])
        except RuntimeError as exc:
            raise ValueError(f"{self.out / CHECKPOINT}: its method state does not fit its config "
                             f"({str(exc).splitlines()[-1].strip()[:200]})") from None
        self._restore_optimizer(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        pos = ckpt["position"]
        self.step, self.epoch, self.batch_in_epoch = pos["step"], pos["epoch"], pos["batch"]
        self.history = json.loads(ckpt["history"])
        self.planned_epochs = int(ckpt.get("planned_epochs", self.cfg.train.epochs))
        if "train.epochs" in self.resume_changes:  # told a new length on resume
            self.planned_epochs = self.cfg.train.epochs
        self.last_good_step = self.step

    def _restore_optimizer(self, state: dict) -> None:
        """The optimiser state; a run from before weight decay spared biases and norms (one parameter
        group) goes on as it was trained: decay on every parameter."""
        if len(state.get("param_groups", ())) == 1 and len(self.optimizer.param_groups) == 2:
            self.optimizer = build_optimizer(self.cfg, self.method, decay_all=True)
            self.scheduler = build_scheduler(self.cfg, self.optimizer, lambda: self.total_steps)
            self.notes.append("resumed a run whose optimiser decays every parameter (one group): kept so")
        self.optimizer.load_state_dict(state)

    def save(self) -> None:
        """Write the checkpoint, never one holding a non-finite tensor (``TrainingStopped`` instead)."""
        if not self.is_main:
            return
        state = self.state_dict()
        bad = list(nonfinite_tensors({"method": state["method"], "optimizer": state["optimizer"]}))
        if bad:
            raise TrainingStopped(f"non-finite values in {len(bad)} tensors at step {self.step} "
                                  f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): checkpoint not "
                                  f"written; {self._last_good()}")
        try:
            save_checkpoint(self.out / CHECKPOINT, state)
        except OSError as exc:
            failure = _write_failure(exc, self.out)
            raise TrainingStopped(f"{failure} writing the checkpoint; {self._last_good()}") from None
        self.last_good_step = self.step

    @contextlib.contextmanager
    def _naming_last_good(self):
        """A stop raised below the trainer (the data ran out of usable files) names the last good checkpoint."""
        try:
            yield
        except TrainingStopped:
            raise
        except Stopped as exc:
            raise TrainingStopped(f"{exc}; {self._last_good()}") from None

    def _last_good(self) -> str:
        """Where the run can resume from, in words."""
        if self.last_good_step is None:
            return "no checkpoint was written (nothing to resume)"
        return f"last good checkpoint: step {self.last_good_step} ({self.out / CHECKPOINT})"

    # ---- logging ----------------------------------------------------------------------------
    def _tensorboard(self):
        if not self.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # the tensorboard extra is optional
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    def _log(self, record: dict) -> None:
        if not self.is_main:
            return
        # wall-clock: the UTC stamp and the seconds since this process set the run up (wall_s)
        record = {**record, "time": utc_now(), "wall_s": round(time.perf_counter() - self.t_created, 3)}
        self.history.append(record) if "eer" in record else None
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, record.get("step", self.step))

    # ---- the loop ---------------------------------------------------------------------------
    def _loader(self):
        # The batch sampler runs in this process, so one loader with persistent workers serves
        # every epoch (no re-fork and cold first batch at each epoch boundary).
        if isinstance(self.dataset, ShardDataset):
            return self._shard_loader()
        self.sampler.set_position(self.epoch, self.batch_in_epoch)
        if getattr(self, "_data_loader", None) is None or self._data_loader.dataset is not self.dataset:
            w = self.cfg.data.workers
            cache = getattr(self.dataset, "cache", None)
            if cache is not None:
                cache.fill(threads=max(1, torch.get_num_threads()), progress=self.is_main)
            self._data_loader = torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self.sampler, collate_fn=collate, num_workers=w,
                prefetch_factor=self.cfg.data.prefetch if w else None, persistent_workers=w > 0,
                pin_memory=self.device.type == "cuda", worker_init_fn=_single_threaded)
        return self._data_loader

    def _shard_loader(self):
        # the stream is the dataset: workers take a copy of its position at each epoch's start (no persistence)
        self.sampler.set_position(self.epoch, self.batch_in_epoch)
        w = self.cfg.data.workers
        return torch.utils.data.DataLoader(
            self.sampler, batch_size=None, num_workers=w, prefetch_factor=self.cfg.data.prefetch if w else None,
            pin_memory=self.device.type == "cuda", worker_init_fn=_single_threaded)

    def _features(self, wave: torch.Tensor) -> torch.Tensor:
        wave = wave.to(self.device, non_blocking=True)
        B, V, T = wave.shape
        if self.augmenter is not None and self.cfg.augment.on_device:
            rng = np.random.default_rng([self.cfg.train.seed, self.step])  # resumable: keyed by step
            wave = self.augmenter.augment_views(wave, rng)
        feats = self.features(wave.reshape(B * V, T))
        return feats.reshape(B, V, *feats.shape[1:])

    def train(self, max_minutes: float | None = None, stop_after_steps: int | None = None) -> dict:
        """Run to the end (or the time/step limit, with a checkpoint); returns the last metrics."""
        bar = tqdm(total=self.total_steps, initial=self.step, unit="step", disable=not self.is_main,
                   dynamic_ncols=True, mininterval=2.0)
        run = _Run(bar, max_minutes, stop_after_steps, self.cfg.train.fit_to_budget and max_minutes is not None,
                   epoch_step0=self.step)
        self.method.train()
        self.method.on_schedule(self.planned_epochs)
        with contextlib.closing(bar), self._naming_last_good():  # the bar is closed before any error is reported
            while self.epoch < self.planned_epochs and not run.stopped:
                self._train_epoch(run)
                if run.stopped and self.batch_in_epoch < self.steps_per_epoch:
                    break  # stopped mid-epoch: the checkpoint resumes inside it
                self._end_epoch(run)
        self.save()
        return self._result(run)

    def _train_epoch(self, run: _Run) -> None:
        """The rest of the current epoch's batches, until the time or step limit."""
        for batch in self._loader():
            if self._step(batch, run) and run.over(self.step):
                run.stopped = True
                break

    def _step(self, batch: dict, run: _Run) -> bool:
        """One optimiser step on ``batch``; False when its loss was not finite (the step is skipped)."""
        self.batch_in_epoch += 1  # consumed, even if its step is skipped below
        feats, labels, extras = self._inputs(batch)
        self._snapshot.take()
        with _autocast(self.precision, self.device):
            loss, logs = self.forward(feats, labels, **extras)
        if not torch.isfinite(loss):
            self._snapshot.restore()  # the forward pass leaves no trace: BN statistics, queues, centres
            self._skip_nonfinite(run)
            return False
        run.nonfinite = 0
        self._optimise(loss, logs)
        self.method.after_step(self.step, self.total_steps)
        self.step += 1
        run.examples += feats.shape[0] * self.world
        if run.warm is None and not run.epoch_seconds and self.step - run.epoch_step0 >= WARM_STEPS:
            run.warm = (time.perf_counter(), self.step)
        t = self.cfg.train
        if self.step % t.log_every == 0 or self.step == 1:
            self._log_step(loss, logs, run)
        run.bar.update(1)
        if t.checkpoint_every and self.step % t.checkpoint_every == 0:
            self.save()
        return True

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """(features [B, V, n_mels, frames], labels [B] or None, the extra fields the method wants)."""
        feats = self._features(batch["wave"])
        if self.cfg.train.channels_last:
            feats = feats.contiguous()
        labels = batch.get("label")
        labels = labels.to(self.device) if labels is not None else None
        extras = {}
        if "index" in self.method.wants:
            extras["index"] = batch["index"].to(self.device)
        if "local_feats" in self.method.wants and "local" in batch:
            extras["local_feats"] = self._features(batch["local"])
        return feats, labels, extras

    def _skip_nonfinite(self, run: _Run) -> None:
        run.nonfinite += 1
        self.optimizer.zero_grad(set_to_none=True)
        self._log({"step": self.step, "event": "non-finite loss", "in_a_row": run.nonfinite})
        if run.nonfinite >= self.cfg.train.max_nonfinite:
            raise TrainingStopped(f"{run.nonfinite} non-finite losses in a row at step {self.step}; "
                                  f"{self._last_good()}")

    def _optimise(self, loss: torch.Tensor, logs: dict) -> None:
        """Backward, optional gradient clipping (its norm logged), optimiser and LR-schedule step."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.method.parameters(),
                                                                     self.cfg.optim.grad_clip))
        self.method.before_optimizer_step()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def _log_step(self, loss: torch.Tensor, logs: dict, run: _Run) -> None:
        rate = run.examples / max(1e-9, time.perf_counter() - run.rate_t0)
        self._log({"step": self.step, "epoch": self.epoch, "loss": float(loss.detach()),
                   "lr": self.optimizer.param_groups[0]["lr"], "examples_per_s": round(rate, 2), **logs})
        run.bar.set_postfix(loss=f"{float(loss.detach()):.3f}", ex_s=f"{rate:.1f}", ep=self.epoch)

    def _end_epoch(self, run: _Run) -> None:
        """The method's epoch-end work, validation when due, the re-plan to the budget, a checkpoint."""
        self.method.on_epoch_end(self.epoch_context())
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        v = self.cfg.validation
        if v.trials and v.every_epochs and self.epoch % v.every_epochs == 0 and self.is_main:
            self._validate_and_log()
        if run.fit:
            now = time.perf_counter()
            run.epoch_seconds.append(epoch_estimate(now, run, self.step, self.steps_per_epoch))
            run.epoch_t0, run.epoch_step0 = now, self.step
            self._fit_to_budget(run.epoch_seconds, 60 * run.max_minutes - (now - run.start), run.bar)
        self.save()

    def _validate_and_log(self) -> None:
        """Validation EER in log.jsonl; a failing validation is logged and training goes on."""
        try:
            metrics = self.validate()
        except Exception as exc:  # validation is a side measurement: it never costs the training state
            msg = f"validation failed: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            log.warning(msg)
            self._log({"step": self.step, "epoch": self.epoch, "event": msg})
            return
        self._log({"step": self.step, "epoch": self.epoch, **metrics})

    def epoch_context(self) -> EpochContext:
        """What the method is told at the end of the current epoch."""
        return EpochContext(epoch=self.epoch, planned_epochs=self.planned_epochs, step=self.step,
                            steps_per_epoch=self.steps_per_epoch, total_steps=self.total_steps, device=self.device,
                            embed_training_set=self.embed_training_set)

    def _result(self, run: _Run) -> dict:
        result = {"step": self.step, "epoch": self.epoch, "finished": self.epoch >= self.planned_epochs,
                  "minutes": round((time.perf_counter() - run.start) / 60, 2)}
        if self.history:
            result.update(self.history[-1])
        return result

    def _fit_to_budget(self, epoch_seconds: list[float], remaining_s: float, bar) -> None:
        """Planned epochs = epochs done + ⌊remaining budget / median recent epoch time⌋."""
        recent = epoch_seconds[1:] if len(epoch_seconds) > 1 else epoch_seconds  # the first pays compilation
        per_epoch = float(np.median(recent[-5:]))
        planned = torch.tensor(self.epoch + max(0, int(remaining_s // per_epoch)), device=self.device)
        planned = int(dist_utils.broadcast(planned)) if self.world > 1 else int(planned)  # ranks agree
        if planned != self.planned_epochs:
            self._log({"step": self.step, "epoch": self.epoch, "event": "re-planned to fit the time budget",
                       "planned_epochs": planned, "epoch_seconds": round(per_epoch, 2)})
            self.planned_epochs = planned
            self.method.on_schedule(planned)
            bar.total = self.total_steps
            bar.refresh()

    @torch.no_grad()
    def embed_training_set(self, encoder: torch.nn.Module | None = None, crop_seconds: float | None = None,
                           batch_size: int = 64) -> torch.Tensor:
        """L2-normalised embeddings [N, D] of every training utterance, in dataset order, for epoch-end
        work such as clustering: whole utterances (``crop_seconds`` None; ``embed_files``, padded batches,
        each the same as alone), or one centred crop of ``crop_seconds``. Computed on every rank (cheap
        relative to an epoch, and keeps ranks in lock-step); an unreadable file gives a zero row (never a
        positive)."""
        encoder = encoder if encoder is not None else self.method.inference_encoder()
        if crop_seconds is None:
            return self._embed_whole_utterances(encoder)
        entries = self.dataset.entries
        frames = int(crop_seconds * 16000)
        was_training = encoder.training
        encoder.eval()
        out = []
        for i in range(0, len(entries), batch_size):
            x = torch.from_numpy(np.stack([_centred_crop(e, frames) for e in entries[i:i + batch_size]]))
            with _autocast(self.precision, self.device):
                out.append(torch.nn.functional.normalize(encoder(self.features(x.to(self.device))).float(), dim=1))
        encoder.train(was_training)
        return torch.cat(out)

    def _embed_whole_utterances(self, encoder: torch.nn.Module) -> torch.Tensor:
        """``embed_training_set`` of whole utterances; a file that cannot be read is a zero row."""
        paths = [e.path for e in self.dataset.entries]
        # eager, as validation: whole utterances of every length would each compile a static graph
        with torch.compiler.set_stance("force_eager"), _autocast(self.precision, self.device):
            try:
                by_path = embed_files(encoder, self.features, paths, self.device, progress=False)
            except (AudioError, OSError, ValueError):  # one unreadable file: the others one at a time
                by_path = {}
                for path in dict.fromkeys(paths):
                    try:
                        by_path.update(embed_files(encoder, self.features, [path], self.device, progress=False))
                    except (AudioError, OSError, ValueError):
                        pass
        dim = len(next(iter(by_path.values())))
        rows = [torch.from_numpy(by_path[p]) if p in by_path else torch.zeros(dim) for p in paths]
        return torch.stack(rows).to(self.device)

    def validate(self) -> dict:
        """EER and minDCF(0.01) on the validation trial list, full-utterance cosine scoring."""
        v = self.cfg.validation
        trials = read_trials(v.trials)
        root = v.audio_root or str(Path(v.trials).parent)
        paths = validation_paths(v)
        with torch.compiler.set_stance("force_eager"):  # full utterances: a static graph per length would not pay
            emb = embed_files(self.method.inference_encoder(), self.features, paths, self.device, v.max_seconds,
                              progress=False)
        m = metrics_from_scores(score_trials(trials, emb, root), trial_labels(trials))
        return {"eer": round(m["eer"], 3), "eer_threshold": float(m["eer_threshold"]),
                "min_dcf_0.01": round(m["min_dcf_0.01"], 4)}


def _write_failure(exc: OSError, out: Path) -> str:
    """A failed write in words: "no space left on the device of RUN", or the error's own text."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device of {out}"
    return f"{exc.strerror or exc} ({exc.filename or out})"


def train(cfg: Config, out_dir, resume: bool = False, max_minutes: float | None = None,
          stop_after_steps: int | None = None, force: bool = False, overrides: list[str] | None = None) -> dict:
    """Train in the run folder ``out_dir``, held by this process (the main one of a distributed run) throughout.

    A new run over an existing checkpoint is refused unless ``force`` (the old run is moved aside);
    ``overrides`` are the command line's, applied on ``resume`` where they can change safely."""
    main = int(os.environ.get("RANK", "0")) == 0
    with claim_run_folder(out_dir, resume, force) if main else contextlib.nullcontext():
        trainer = Trainer(cfg, out_dir, resume, overrides)
        return trainer.train(max_minutes, stop_after_steps)


__all__ = ["Trainer", "train", "TrainingStopped"]
