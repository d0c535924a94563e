"""The development training pool, small enough to travel to a lent GPU machine (64 MiB in all).

Writes ``.devdata/`` (git-ignored) beside the repository: the speechocean762 training pool
(``protocol/train.csv`` only, never the dev speakers) re-encoded as Opus at about 24 kbit/s
with its manifest rewritten, plus the LibriSpeech clips, noises and RIRs as they are. The dev
audio stays here: GPU runs are scored on this machine's FLAC copy (``dev_protocol.py
--evaluate-only``). Existing outputs are kept, so an interrupted run resumes.
"""

import argparse
import csv
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import soundfile as sf

from sslspeaker.fileio import atomic_path
from sslspeaker.paths import data_root

ROOT = Path(__file__).resolve().parents[1]
OPUS_LEVEL = 0.93  # libsndfile's compression level: ~24 kbit/s on this speech (0.9: ~33, 0.95: ~20)


def encode(job: tuple[str, str]) -> None:
    src, dst = job
    if os.path.exists(dst):
        return
    x, sr = sf.read(src, dtype="float32")
    with atomic_path(dst) as tmp:  # an interrupted run leaves no half file that would count as done
        sf.write(str(tmp), x, sr, format="OGG", subtype="OPUS", compression_level=OPUS_LEVEL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / ".devdata"))
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    src, out = data_root(required=True), Path(args.out)
    so_in, so_out = src / "speechocean762", out / "speechocean762"
    rows = list(csv.DictReader(open(so_in / "protocol" / "train.csv")))
    opus = [r["path"].rsplit(".", 1)[0] + ".opus" for r in rows]
    with ProcessPoolExecutor(args.jobs) as ex:
        list(ex.map(encode, [(str(so_in / r["path"]), str(so_out / o)) for r, o in zip(rows, opus)], chunksize=20))
    (so_out / "protocol").mkdir(parents=True, exist_ok=True)
    with open(so_out / "protocol" / "train.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "speaker", "duration"])
        w.writeheader()
        w.writerows({**r, "path": o} for r, o in zip(rows, opus))
    for name in ("librispeech-clips", "noise", "rir"):
        shutil.copytree(src / name, out / name, dirs_exist_ok=True)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
