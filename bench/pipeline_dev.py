"""The pipeline on the development pool: dev figures stage by stage, under a wall-clock budget.

Runs ``sslspeaker pipeline RECIPE --max-minutes M --out runs/pipeline/LABEL`` (resumable with
``--resume``) and records one row per stage from its ``report.json``: minutes, dev EER and
minDCF(0.01) after every stage that changes the verifier, Cllr / min Cllr where the scores are
calibrated log-likelihood ratios, and each pseudo-label round's cluster count (how ``auto`` found
it), kept utterances and NMI / purity against the pool's true speakers (report only: nothing in the
pipeline reads them). Rows accumulate in ``bench/results/pipeline_dev.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from _record import ROOT, commit, cpu_kind, record, table

from sslspeaker.pipeline import run_pipeline

RESULTS = ROOT / "bench" / "results" / "pipeline_dev.jsonl"
RUN_NOTES = {
    "pipeline_90min_xeon": "three helper sessions' targeted tests ran beside it at the lowest CPU priority (the "
                           "pipeline's process group at autogroup nice -20); they still cost it some steps (its "
                           "examples/s in log.jsonl sit below those of the quiet 60-min run).",
    "pipeline_90min_xeon_cosine": "the same run's stages ssl..labels3 (done, not re-run), resumed with the back-end "
                                  "stage's chain [lengthnorm] (calibrated cosine) instead of [whiten, lengthnorm, "
                                  "plda]: the code of the commit shown, the recipe of the commit after it.",
    "pipeline_90min_xeon_r4": "four rounds of about 12 minutes (the recipe at its commit), calibrated on the "
                              "pseudo-speakers labels4 held out of round 4. Beside it, at lower CPU priority (its "
                              "process group at autogroup nice -20): the two-node torchrun test, short unit tests "
                              "and a small data-path check, a few minutes of CPU in all.",
    "pipeline_90min_epyc_bf16": "the recipe and code of pipeline_90min_xeon_r4 on a third CPU kind, an AMD EPYC with "
                                "AVX-512-BF16 (bf16 training, no AMX), nothing else running: started by mistake under the "
                                "label pipeline_90min_avx2 and recorded under this one by a second pass with --resume "
                                "over the finished run (every stage done, nothing re-run: the report's resumed = 1).",
}
COLUMNS = ["run", "stage", "kind", "minutes", "EER %", "minDCF0.01", "Cllr", "min Cllr", "backend", "clusters",
           "kept", "NMI", "purity", "commit", "cpu"]


def stage_rows(label: str, report: dict, code: str, cpu: str) -> list[dict]:
    """One row per stage of a pipeline report."""
    rows = []
    for name, st in report["stages"].items():
        row = {"run": label, "stage": name, "kind": st["kind"], "minutes": st["minutes"], "commit": code, "cpu": cpu}
        dev = st.get("dev") or {}
        row.update({"EER %": _r(dev.get("eer"), 2), "minDCF0.01": _r(dev.get("min_dcf_0.01"), 3),
                    "Cllr": _r(dev.get("cllr"), 3), "min Cllr": _r(dev.get("min_cllr"), 3),
                    "backend": dev.get("backend", "")})
        if st["kind"] == "pseudolabel":
            out = st["outputs"]
            diag = (out.get("diagnostics") or {}).get("kept") or {}
            how = (out.get("k_found_by") or {}).get("source", "")
            row.update({"clusters": f"{out['k']} ({how})" if how else out["k"], "kept": out["kept"],
                        "NMI": _r(diag.get("nmi"), 3), "purity": _r(diag.get("purity"), 3)})
        rows.append(row)
    return rows


def _r(x, n):
    return "" if x is None else round(float(x), n)


def read_rows() -> list[dict]:
    return [json.loads(l) for l in open(RESULTS)] if RESULTS.exists() else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("recipe", nargs="?", default="configs/pipeline_speechocean762.yaml")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--minutes", type=float, default=90.0, help="the pipeline's wall-clock budget")
    ap.add_argument("--label", help="run name (default: pipeline_<minutes>min)")
    ap.add_argument("--out", default="runs/pipeline", help="run folder root")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--render", action="store_true", help="only rewrite the section from the stored rows")
    args = ap.parse_args()
    rows = read_rows()
    if not args.render:
        label = args.label or f"pipeline_{args.minutes:g}min"
        code = commit()
        report = run_pipeline(args.recipe, args.overrides, Path(args.out) / label, max_minutes=args.minutes,
                              resume=args.resume)
        new = stage_rows(label, report, code, cpu_kind())
        rows = [r for r in rows if r["run"] != label] + new
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = RESULTS.with_name(f".{RESULTS.name}.tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, RESULTS)
    body = table(rows, COLUMNS) + "\n\n" + (
        "Each run: `python bench/pipeline_dev.py RECIPE OVERRIDES --minutes M --label RUN` (the recipe's stages under "
        "one wall-clock budget on this machine's CPU; column cpu). Dev figures (`speechocean762/protocol/"
        "dev_trials.txt`, 9,500 trials, 25 held-out speakers) are scored after each stage for the report only; their "
        "scoring time is not in the stage minutes. NMI and purity compare a round's kept clusters with the pool's "
        "true speakers (100 speechocean762 speakers + 251 one-clip LibriSpeech speakers), reported and never used."
        + "".join(f"\n\n{run}: {note}" for run, note in RUN_NOTES.items() if any(r["run"] == run for r in rows)))
    record("pipeline_dev", "Pipeline: unlabelled pool to a calibrated verifier, dev trials stage by stage", body,
           command="python bench/pipeline_dev.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
