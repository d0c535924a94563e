"""`sslspeaker prepare` speed on the shared data: files per second (header + partial-read probes)."""

import argparse
import shutil
import tempfile
from pathlib import Path

from sslspeaker.data.prepare import prepare
from sslspeaker.paths import data_root

from _record import record, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    root = data_root(required=True)
    rows = []
    for kind, folder in [("speechocean762", "speechocean762"), ("librispeech", "librispeech-clips")]:
        out = Path(tempfile.mkdtemp())
        try:
            best = None
            for _ in range(2):  # second pass: files in the page cache, as after a first listing
                s = prepare(kind, root / folder, out, workers=args.workers, progress=False)
                best = s if best is None or s["seconds"] < best["seconds"] else best
            rows.append({"corpus": f"{folder} ({kind})", "files": s["files"], "kept": s["kept"],
                         "seconds": best["seconds"], "files/s": best["files_per_second"]})
        finally:
            shutil.rmtree(out)
    body = table(rows, ["corpus", "files", "kept", "seconds", "files/s"])
    body += ("\n\nEach file: header read plus three 1-s partial reads (start, middle, end) for truncation and "
             "silence; best of 2 runs (warm page cache). FLAC decodes fast; the Opus clips are longer "
             "and slower to decode.")
    if not args.no_record:
        record("prepare", "Data preparation speed (`sslspeaker prepare`)", body)
    else:
        print(body)


if __name__ == "__main__":
    main()
