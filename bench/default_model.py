"""Package a development run, or choose a pipeline's model, as the default model shipped inside sslspeaker.

``python bench/default_model.py RUN_DIR``: exports RUN_DIR's encoder to
``src/sslspeaker/pretrained/default.safetensors`` with its decision threshold set to the EER
threshold on the speechocean762 dev trials (full-utterance cosine), and records in BENCHMARKS.md
how the model was trained (recipe, steps, budget, commit of the training run) and its dev
EER/minDCF.

``python bench/default_model.py --pipeline DIR [DIR ...]``: the candidates are the shipped default
and each pipeline's final ``model.safetensors`` (its back-end, calibration and Bayes threshold
as the pipeline made them from the pool alone); each is scored on the dev trials with what it
carries, and the lowest dev EER is shipped, unchanged. The dev trials choose; they fit nothing.
"""

import argparse
import json
from pathlib import Path

from sslspeaker.evaluation.evaluate import evaluate
from sslspeaker.inference import default_model_path
from sslspeaker.training.export import export_model
from sslspeaker.paths import data_root
from sslspeaker.training.checkpoint import load_checkpoint

from _record import record, table

RESULTS = Path(__file__).resolve().parent / "results" / "dev_protocol.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir", nargs="?", help="a finished development run, e.g. runs/dev/moco_30min")
    ap.add_argument("--pipeline", nargs="+", help="pipeline output folders whose model.safetensors are candidates")
    ap.add_argument("--protocols", default="full,mocovox10x10,clova10crop",
                    help="scoring protocols for the dev table (the threshold always comes from full)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    if args.pipeline:
        return choose_from_pipelines(args)
    if not args.run_dir:
        ap.error("give RUN_DIR or --pipeline DIR")
    so = data_root(required=True) / "speechocean762"
    trials = so / "protocol" / "dev_trials.txt"
    res = evaluate(args.run_dir, trials, so, protocol="full", cache=False, progress=False)
    by_protocol = []
    # the protocols, then full-utterance cosine after z-scoring over the dev utterances (evaluate --embedding-norm)
    for name, norm in [("full", None)] + [(p, None) for p in args.protocols.split(",") if p != "full"] \
            + [("full", "zscore")]:
        r = res if (name, norm) == ("full", None) else evaluate(args.run_dir, trials, so, protocol=name, cache=False,
                                                                progress=False, embedding_norm=norm)
        by_protocol.append({"protocol": name + (f" + embedding-norm {norm} over the trials" if norm else ""),
                            "EER %": round(r["eer"], 2), "minDCF0.01": round(r["min_dcf_0.01"], 3),
                            "minDCF0.05": round(r["min_dcf_0.05"], 3)})
    previous = previous_default_row(trials, so)
    if previous["dev EER %"] <= round(res["eer"], 2):
        print(json.dumps(previous), f"is not worse on the dev trials than {args.run_dir} ({res['eer']:.2f} %): kept")
        return
    ckpt = load_checkpoint(Path(args.run_dir) / "checkpoints" / "last.pt")
    source = (f"dev EER threshold on speechocean762/protocol/dev_trials.txt (sha256 {res['trials']['sha256'][:12]}, "
              "full-utterance cosine)")
    out = export_model(args.run_dir, default_model_path(), threshold=res["eer_threshold"], threshold_source=source)
    label = Path(args.run_dir).name
    run_row = next((json.loads(l) for l in open(RESULTS) if json.loads(l)["run"] == label), {}) if RESULTS.exists() else {}
    row = {"model": "default.safetensors", "trained from run": label, "recipe": run_row.get("recipe", "?"),
           "overrides": run_row.get("overrides", "-"),
           "steps": ckpt["position"]["step"], "epochs": ckpt["position"]["epoch"],
           "training minutes": run_row.get("minutes", "?"), "dev EER %": round(res["eer"], 2),
           "dev minDCF0.01": round(res["min_dcf_0.01"], 3), "threshold": round(res["eer_threshold"], 4),
           "size MB": round(out.stat().st_size / 2**20, 1)}
    print(json.dumps(row), json.dumps(by_protocol))
    if args.no_record:
        return
    body = table([row], list(row)) + "\n\nOn the dev trials, by scoring protocol:\n\n" + table(by_protocol, list(by_protocol[0]))
    body += ("\n\nHow it was chosen: by the dev trials only. The candidates were the default shipped before and "
             "this run, each scored on `speechocean762/protocol/dev_trials.txt` by the same code (full utterance, "
             "cosine); the lower dev EER is shipped:\n\n" + table([previous, {"candidate": label, "dev EER %":
                                                                            round(res["eer"], 2), "chosen": "yes"}],
                                                                           ["candidate", "dev EER %", "chosen"]))
    body += ("\n\nThe model bundled as `sslspeaker/pretrained/default.safetensors` (used by `evaluate`, `embed` and "
             "`verify` when no `--model` is given). Trained self-supervised (no labels) with the development "
             "recipe on `speechocean762/protocol/train.csv` + the LibriSpeech clips, never the dev speakers; the "
             "training command and commit are in the development-protocol section's row of the same name. Its "
             "threshold is the dev-trial EER threshold.")
    record("default_model", "The default model shipped in the package", body)


def previous_default_row(trials: Path, audio_root: Path) -> dict:
    """The shipped default's dev EER (scored from a copy: the file may be replaced)."""
    import shutil

    kept = Path("/tmp") / "sslspeaker_previous_default.safetensors"
    shutil.copyfile(default_model_path(), kept)
    r = evaluate(str(kept), trials, audio_root, protocol="full", cache=False, progress=False)
    return {"candidate": "default shipped before", "dev EER %": round(r["eer"], 2), "chosen": ""}


def dev_row(name: str, model: Path, trials: Path, audio_root: Path) -> dict:
    """The dev-trial figures of ``model`` scored with what it carries (back-end, calibration)."""
    r = evaluate(str(model), trials, audio_root, protocol="full", cache=False, progress=False)
    return {"candidate": name, "file": str(model), "backend": r.get("backend") or "cosine",
            "dev EER %": round(r["eer"], 2), "dev minDCF0.01": round(r["min_dcf_0.01"], 3),
            "Cllr": "" if r.get("cllr") is None else round(r["cllr"], 3),
            "min Cllr": "" if r.get("min_cllr") is None else round(r["min_cllr"], 3),
            "size MB": round(model.stat().st_size / 2**20, 1)}


def choose_from_pipelines(args) -> None:
    """Score the shipped default and each pipeline's model on the dev trials; ship the lowest dev EER."""
    import shutil

    from sslspeaker.fileio import atomic_path

    so = data_root(required=True) / "speechocean762"
    trials = so / "protocol" / "dev_trials.txt"
    shipped = default_model_path()
    kept = Path("/tmp") / "sslspeaker_previous_default.safetensors"
    shutil.copyfile(shipped, kept)  # the candidate is scored from a copy: the file may be replaced below
    rows = [dev_row("shipped default (before)", kept, trials, so)]
    for folder in args.pipeline:
        rows.append(dev_row(f"pipeline {Path(folder).name} (its stages: the pipeline section's rows of that run)",
                            Path(folder) / "model.safetensors", trials, so))
    best = min(rows, key=lambda r: r["dev EER %"])
    for r in rows:
        r["chosen"] = "yes" if r is best else ""
    print(json.dumps(rows, indent=1))
    if best is not rows[0]:
        with atomic_path(shipped, suffix=".safetensors") as tmp:
            shutil.copyfile(best["file"], tmp)
    if args.no_record:
        return
    for r in rows:
        r["file"] = Path(r["file"]).name if r is not rows[0] else "default.safetensors (before)"
    body = table(rows, list(rows[0])) + (
        "\n\nHow it was chosen: every candidate is scored on `speechocean762/protocol/dev_trials.txt` with what its "
        "file carries (back-end, calibration, decision threshold), and the lowest dev EER is shipped unchanged. The "
        "dev trials only choose: the pipeline's back-end and calibration were fitted on its pool's pseudo-speakers "
        "(no dev speaker, no label), its threshold is the Bayes threshold at its stated prior, and no outside set "
        "was scored.")
    command = "python bench/default_model.py --pipeline " + " ".join(args.pipeline)
    if best is rows[0]:  # the shipped model stays: its own section (how it was made) stays too
        record("default_model_candidates", "Default-model candidates the dev trials turned down", body, command=command)
    else:
        record("default_model", "The default model shipped in the package", body, command=command)


if __name__ == "__main__":
    main()
