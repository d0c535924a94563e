"""Speech-activity settings chosen on the dev trials: the shipped model scored with each detector setting.

``python bench/vad_dev.py [MODEL]`` scores speechocean762's dev trials (full-utterance cosine) with
the model (default: the packaged one) without the detector and with each setting of
``data.activity``'s rule: its threshold below the file's loud frames, the padding of each run,
and the gap kept between runs (inf: only the leading and trailing non-speech is cut). The
setting with the lowest dev EER is the one to ship; the rows say what each costs or gains. The
outside set is never used for this choice.
"""

import argparse
import math
from pathlib import Path

import numpy as np

from sslspeaker.data import activity
from sslspeaker.data.audio import read_audio
from sslspeaker.data.manifest import read_trials
from sslspeaker.evaluation.metrics import compute_eer
from sslspeaker.evaluation.evaluate import evaluate
from sslspeaker.inference import SpeakerEncoder, default_model_path
from sslspeaker.paths import data_root

from _record import record, table

# (threshold dB, padding s, gap kept s); None: the detector off
SETTINGS = [None] + [(35.0, p, 0.0) for p in (0.2, 0.3, 0.5, 0.75, 1.0)] \
    + [(t, 0.5, 0.0) for t in (40.0, 45.0, 50.0)] + [(35.0, 0.2, 1.0), (35.0, 0.2, math.inf), (35.0, 0.5, math.inf)]


def score(model: SpeakerEncoder, setting) -> dict:
    so = data_root(required=True) / "speechocean762"
    model.vad = setting is not None
    if setting is not None:
        activity.THRESHOLD_DB, activity.PADDING, activity.KEEP_GAP = setting
    res = evaluate(model, so / "protocol" / "dev_trials.txt", so, protocol="full", cache=False, progress=False)
    name = "off (--no-vad)" if setting is None else \
        f"threshold {setting[0]:g} dB, padding {setting[1]:g} s, gap kept {setting[2]:g} s"
    return {"detector": name, "EER %": round(res["eer"], 2), "minDCF0.01": round(res["min_dcf_0.01"], 3)}


def padded_eer(model: SpeakerEncoder, vad: bool, seconds: float = 10.0, dbfs: float = -60.0) -> float:
    """Dev EER (full-utterance cosine) when every file has ``seconds`` of ``dbfs`` white noise on each side (the
    issue's near-silence case), embedded with the detector on or off."""
    so = data_root(required=True) / "speechocean762"
    trials = read_trials(so / "protocol" / "dev_trials.txt")
    rng = np.random.default_rng(0)
    amp = 10 ** (dbfs / 20)
    emb = {}
    for path in sorted({p for t in trials for p in (t.a, t.b)}):
        x = read_audio(so / path)
        side = lambda: (amp * rng.standard_normal(int(seconds * 16000))).astype(np.float32)  # noqa: E731
        emb[path] = model.embed(np.concatenate([side(), x, side()]), vad=vad)
    scores = np.array([float(emb[t.a] @ emb[t.b]) for t in trials])
    return 100.0 * compute_eer(scores, np.array([t.label for t in trials]))[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("model", nargs="?", default=None, help="a model or run (default: the packaged model)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    model = SpeakerEncoder.load(args.model or default_model_path())
    defaults = (activity.THRESHOLD_DB, activity.PADDING, activity.KEEP_GAP)
    rows = [score(model, s) for s in SETTINGS]
    for r in rows:
        print(r, flush=True)
    activity.THRESHOLD_DB, activity.PADDING, activity.KEEP_GAP = defaults
    padded = [{"audio": "10 s of -60 dBFS noise on each side of every dev file", "detector": name,
               "EER %": round(padded_eer(model, vad), 2)} for name, vad in (("shipped setting", True), ("off", False))]
    print(padded, flush=True)
    # looser thresholds than 40 dB keep -60 dBFS near-silence around speech as speech (tests/test_speech_activity.py)
    best = min((r for s, r in zip(SETTINGS, rows) if s is not None and s[0] <= 40.0),
               key=lambda r: (r["EER %"], r["minDCF0.01"]))
    body = (f"Model: `{args.model or Path(default_model_path()).name}` (packaged), speechocean762 dev trials, "
            "full-utterance cosine. Shipped setting: threshold "
            f"{defaults[0]:g} dB, padding {defaults[1]:g} s, gap kept {defaults[2]:g} s. Lowest dev EER with the "
            f"detector on, at thresholds that still cut -60 dBFS near-silence (<= 40 dB): {best['detector']}.\n\n" + table(rows, ["detector", "EER %", "minDCF0.01"])
            + "\n\nThe near-silence case of issue 21 on the whole dev list (cosine, the same model):\n\n"
            + table(padded, ["audio", "detector", "EER %"]))
    if not args.no_record:
        record("vad_dev", "Speech activity detector settings on the dev trials (issue 21)", body)


if __name__ == "__main__":
    main()
