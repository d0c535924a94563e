"""The development protocol: train a recipe for a fixed CPU budget, evaluate the dev trials.

Trains on the shared speechocean762 pool (+ LibriSpeech clips, per the recipe) for
``--minutes`` of wall time, then scores `speechocean762/protocol/dev_trials.txt` with each
requested protocol: EER, minDCF(0.01), examples/s, peak memory. One row per run label in the
BENCHMARKS.md section, so methods and recipe changes line up side by side.
"""

import argparse
import fcntl
import json
import resource
import sys
import time
from pathlib import Path

from sslspeaker.config import load_config
from sslspeaker.evaluation.evaluate import evaluate
from sslspeaker.fileio import atomic_write_text
from sslspeaker.paths import data_root
from sslspeaker.training.trainer import Trainer

from _record import commit, hardware_kind, record, table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "dev_protocol.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("recipe", help="e.g. configs/moco_speechocean762.yaml")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--label", help="row name (default: the recipe name)")
    ap.add_argument("--out", default="runs/dev", help="run folder root")
    ap.add_argument("--protocols", default="full")
    ap.add_argument("--group", choices=list(GROUPS), default="screening",
                    help="which table the row joins: methods (equal 30-min budget, one row per method), "
                         "table1 (MoCoVox Table 1 augmentation trend) or screening (recipe work)")
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--no-eval", action="store_true",
                    help="train and record the row without dev scores (a GPU machine that carries only the "
                         "training pool); complete it later with --evaluate-only")
    ap.add_argument("--evaluate-only", action="store_true",
                    help="score the existing run folder LABEL (trained elsewhere) and complete its row")
    ap.add_argument("--render", action="store_true", help="only rewrite the BENCHMARKS.md table from the rows")
    args = ap.parse_args()
    if args.render:
        return write_table(args)
    label = args.label or Path(args.recipe).stem
    run_dir = Path(args.out) / label
    if args.evaluate_only:
        row = next((r for r in read_rows() if r["run"] == label), None)
        if row is None or not (run_dir / "checkpoints" / "last.pt").is_file():
            raise SystemExit(f"--evaluate-only: no row {label!r} in {RESULTS} or no {run_dir}/checkpoints/last.pt")
        code = row["commit"]
    else:
        code = commit()  # the code this run imports now: later commits while it trains are not in it
        row = train_row(args, label, run_dir)
    if not args.no_eval:
        score_row(row, run_dir, args.protocols)
    if not args.evaluate_only:  # a completed row keeps what it was trained with
        row["overrides"] = " ".join(args.overrides) or "-"
        row["group"] = args.group
    row["commit"] = code  # overrides are relative to the recipe as it was at this commit
    print(json.dumps(row), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    # runs side by side (one GPU, several recipes) finish at once; the lock is a file of its own because
    # the results file is replaced, not rewritten, and a lock on a replaced file guards nothing
    with open(RESULTS.with_name(f".{RESULTS.name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = [r for r in read_rows() if r["run"] != label] + [row]
        atomic_write_text(RESULTS, "".join(json.dumps(r) + "\n" for r in rows))  # a crash leaves the old file whole
    if not args.no_record:
        write_table(args, code)


def read_rows() -> list[dict]:
    return [json.loads(l) for l in open(RESULTS)] if RESULTS.exists() else []


def train_row(args, label: str, run_dir: Path) -> dict:
    """Train the recipe for ``args.minutes``; the row's training figures."""
    cfg = load_config(args.recipe, ["validation.every_epochs=0", *args.overrides])
    t0 = time.perf_counter()
    trainer = Trainer(cfg, run_dir)
    result = trainer.train(max_minutes=args.minutes)
    minutes = (time.perf_counter() - t0) / 60
    examples = result["step"] * cfg.train.batch_size
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # rows compare only within one kind of hardware: the budget is wall time
    return {"run": label, "recipe": Path(args.recipe).name, "minutes": round(minutes, 1), "steps": result["step"],
            "epochs": result["epoch"], "examples/s": round(examples / (minutes * 60), 1),
            "peak RSS MB": round(peak_mb), "cpu": hardware_kind(trainer.device)}


def score_row(row: dict, run_dir: Path, protocols: str) -> None:
    """Score the dev trials with each protocol (on this machine's copy of the data) into ``row``."""
    so = data_root(required=True) / "speechocean762"
    for name in protocols.split(","):
        res = evaluate(run_dir, so / "protocol" / "dev_trials.txt", so, protocol=name,
                       out=run_dir / f"dev_{name}.json", cache=False, progress=False)
        row[f"EER % ({name})"] = round(res["eer"], 2)
        row[f"minDCF0.01 ({name})"] = round(res["min_dcf_0.01"], 3)


GROUPS = {
    "methods": "Methods side by side: the same 30-minute CPU budget, data and dev trials (issue 5)",
    "table1": "MoCoVox Table 1, scaled down: augmentation of the two segments at an equal number of steps",
    "screening": "Recipe work on MoCo (issue 3): what each change did",
    "gpu": "Trained on a GPU for a fixed budget, scored on this CPU machine's dev audio",
    "rounds": "Self-training round settings (issue 19): one SSL encoder and one pseudo-label set, a round each",
}


def write_table(args, code: str | None = None) -> None:
    rows = read_rows()
    body = ""
    for group, title in GROUPS.items():
        sub = [r for r in rows if r.get("group", "screening") == group]
        if not sub:
            continue
        cols = ["run", "recipe", "minutes", "steps", "epochs", "examples/s", "peak RSS MB"]
        cols += sorted({k for r in sub for k in r if k.startswith(("EER", "minDCF"))}) + ["overrides", "cpu", "commit"]
        body += f"### {title}\n\n" + table(sub, cols) + "\n\n"
    body += ("Train on `speechocean762/protocol/train.csv` (+ LibriSpeech clips where the recipe adds them) for "
             "the stated wall-clock minutes on a 2-core CPU (column cpu: rows compare within one CPU kind; without "
             "native bf16, AVX2 trains in fp32 at about a third of the AVX-512 machine's examples/s), then score `dev_trials.txt` (9,500 trials, 25 "
             "held-out speakers). References measured on the Xeon (issue 3): sslsv MoCo after 30 min 23.8 % EER; "
             "untrained encoder 31.7 %; MFCC mean+std statistics, no learning, 11.3 %; Resemblyzer 9.2 %. "
             f"Each row's exact command: `python bench/dev_protocol.py RECIPE OVERRIDES --minutes M --label RUN`; "
             "rows accumulate in `bench/results/dev_protocol.jsonl`. Table 1 rows ran with `--minutes 60 --group "
             "table1` and the overrides `train.epochs=N train.fit_to_budget=false` (equal steps; minutes is what "
             "each took). Overrides are relative to the recipe at the "
             "row's commit; rows without one ran at 868461d (A-I, moco_30min: 1.8-s crops, momentum 0.999, lr 0.03) "
             "or 8e73379 (x6_*: the same recipe with the 2-core data path), before the recipe took the "
             "x6 findings (1-s crops, momentum 0.99, lr 0.1, torch.compile). The self-training round rows start "
             "from the 90-min pipeline row's SSL encoder (`01_ssl`) and train on its `04_labels2` pseudo-labels; "
             "they ran one after another at autogroup nice -20 while short tests and a wheel build ran beside "
             "round_base_10min and round_gate_10min (hence their different step counts at equal minutes). "
             "round4_all_speakers_12min repeats pipeline_90min_xeon_r4's round 4 (its SSL encoder, its labels4) on "
             "all 68 pseudo-speakers instead of the 58 the hold-out left it: what the hold-out cost that round.")
    record("dev_protocol", "Development protocol: speechocean762 dev trials after a fixed CPU budget", body,
           command="python bench/dev_protocol.py " + " ".join(sys.argv[1:]), code=code)


if __name__ == "__main__":
    main()
