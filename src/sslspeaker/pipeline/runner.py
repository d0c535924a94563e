"""``sslspeaker pipeline``: run a recipe's stages in order, each resumable, under one time budget.

The output folder holds one sub-folder per stage (``01_ssl``, ``02_labels1``, ...), the resolved
recipe (``pipeline.yaml``), ``report.json`` (each stage's outputs, minutes and dev figures, written
after every stage) and, at the end, ``model.safetensors``. A stage is done when the report says
so; ``--resume`` skips done stages and continues an interrupted training stage from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..config import ConfigError
from ..fileio import atomic_write_text, utc_now
from .config import PipelineConfig, StageConfig, load_pipeline

log = logging.getLogger(__name__)

REPORT = "report.json"


@dataclass
class PipelineState:
    """What ``report.json`` records: the stages done so far and the minutes they took."""

    out: Path
    report: dict = field(default_factory=dict)

    def done(self, stage: StageConfig) -> dict | None:
        entry = self.report.get("stages", {}).get(stage.name)
        return entry if entry and entry.get("done") else None

    def spent_minutes(self) -> float:
        return sum(s.get("minutes", 0.0) for s in self.report.get("stages", {}).values())

    def record(self, stage: StageConfig, entry: dict) -> None:
        self.report.setdefault("stages", {})[stage.name] = entry
        self.save()

    def save(self) -> None:
        self.report["updated"] = utc_now()
        atomic_write_text(self.out / REPORT, json.dumps(self.report, indent=2) + "\n")


@dataclass
class StageContext:
    """What a stage runner receives: the recipe, its own place in it, its folder and its minutes."""

    cfg: PipelineConfig
    index: int
    stage: StageConfig
    folder: Path
    state: PipelineState
    minutes: float | None = None  # train stages: the budget planned for this stage

    def output_of(self, name: str) -> dict:
        return self.state.report["stages"][name]["outputs"]


def stage_folder(out: Path, index: int, stage: StageConfig) -> Path:
    return out / f"{index + 1:02d}_{stage.name}"


def plan_minutes(cfg: PipelineConfig, index: int, spent: float) -> float:
    """Minutes for train stage ``index``: what is left of the budget, less ``overhead_minutes`` for each
    stage still to come that embeds the pool (an ``average`` stage takes seconds), split by the shares
    of the training stages still to come."""
    rest = cfg.stages[index:]
    others = sum(1 for s in rest if s.kind not in ("train", "average"))
    shares = [s.share for s in rest if s.kind == "train"]
    left = cfg.budget_minutes - spent - others * cfg.overhead_minutes
    minutes = left * cfg.stages[index].share / sum(shares)
    if minutes < 1.0:
        raise ConfigError(f"stage {cfg.stages[index].name}: {minutes:.1f} min left of budget_minutes="
                          f"{cfg.budget_minutes:g} after {spent:.1f} min spent: raise the budget")
    return minutes


def open_run(out: Path, cfg: PipelineConfig, resume: bool) -> PipelineState:
    """A new run folder (refusing to overwrite one) or, with ``resume``, the existing run's state."""
    report_path = out / REPORT
    if report_path.exists() and not resume:
        raise ConfigError(f"{out} holds a pipeline run: --resume to continue it, or choose another --out")
    if resume and not report_path.exists():
        raise ConfigError(f"--resume: {out} holds no pipeline run ({REPORT} missing)")
    out.mkdir(parents=True, exist_ok=True)
    state = PipelineState(out)
    if resume:
        state.report = json.loads(report_path.read_text())
        state.report["resumed"] = state.report.get("resumed", 0) + 1
    else:
        state.report = {"created": utc_now(), "budget_minutes": cfg.budget_minutes, "stages": {}}
    atomic_write_text(out / "pipeline.yaml", yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    state.report["config"] = dataclasses.asdict(cfg)
    state.save()
    return state


def run_stage(ctx: StageContext, runners: dict) -> dict:
    """Run one stage, timed; its report entry (outputs, minutes, dev figures)."""
    from .stages import dev_figures

    t0 = time.perf_counter()
    log.info("pipeline: stage %s (%s)%s", ctx.stage.name, ctx.stage.kind,
             f", {ctx.minutes:.1f} min" if ctx.minutes else "")
    outputs = runners[ctx.stage.kind](ctx)
    minutes = (time.perf_counter() - t0) / 60
    t1 = time.perf_counter()
    dev = dev_figures(ctx, outputs)
    return {"kind": ctx.stage.kind, "done": True, "minutes": round(minutes, 2), "outputs": outputs, "dev": dev,
            "dev_minutes": round((time.perf_counter() - t1) / 60, 2), "finished": utc_now()}


def run_pipeline(recipe: str | Path, overrides: list[str] | None, out: str | Path,
                 max_minutes: float | None = None, resume: bool = False) -> dict:
    """Run every stage not yet done; the final report (also in ``OUT/report.json``)."""
    from .stages import RUNNERS, finish

    cfg = load_pipeline(recipe, overrides)
    if max_minutes is not None:
        cfg.budget_minutes = float(max_minutes)
    out = Path(out)
    state = open_run(out, cfg, resume)
    for i, stage in enumerate(cfg.stages):
        if state.done(stage):
            continue
        minutes = plan_minutes(cfg, i, state.spent_minutes()) if stage.kind == "train" else None
        ctx = StageContext(cfg, i, stage, stage_folder(out, i, stage), state, minutes)
        state.record(stage, run_stage(ctx, RUNNERS))
    state.report["final"] = finish(cfg, state)
    state.report["minutes"] = round(state.spent_minutes(), 2)
    state.save()
    return state.report


__all__ = ["run_pipeline", "plan_minutes", "open_run", "PipelineState", "StageContext", "stage_folder"]
