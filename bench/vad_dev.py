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

from sslspeaker.data import activity
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
    return {"detector": name, "EER %": round(res["eer"], 2), "minDCF0.01": round(res["min_dcf_0.01"], 3),
            "seconds": round(res["timing"]["total_s"], 1) if "timing" in res else ""}


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
    # looser thresholds than 40 dB keep -60 dBFS near-silence around speech as speech (tests/test_speech_activity.py)
    best = min((r for s, r in zip(SETTINGS, rows) if s is not None and s[0] <= 40.0),
               key=lambda r: (r["EER %"], r["minDCF0.01"]))
    body = (f"Model: `{args.model or Path(default_model_path()).name}` (packaged), speechocean762 dev trials, "
            "full-utterance cosine. Shipped setting: threshold "
            f"{defaults[0]:g} dB, padding {defaults[1]:g} s, gap kept {defaults[2]:g} s. Lowest dev EER with the "
            f"detector on, at thresholds that still cut -60 dBFS near-silence (<= 40 dB): {best['detector']}.\n\n" + table(rows, ["detector", "EER %", "minDCF0.01"]))
    if not args.no_record:
        record("vad_dev", "Speech activity detector settings on the dev trials (issue 21)", body)


if __name__ == "__main__":
    main()
