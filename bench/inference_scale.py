"""Inference at scale: whole-file embedding of long audio, and batched against one-at-a-time files/s.

Long audio: for each length in ``--minutes`` a fresh subprocess loads the model (the bundled
default unless ``--model``), makes the waveform (synthetic speech, 20 s tiled), then embeds it
once chunked (``SpeakerEncoder.chunk_seconds``, the default) and, up to ``--unchunked-max``
minutes, once in a single forward (``chunk_seconds = inf``, what ``embed`` did before). Peak
memory is the growth of the process's peak RSS (``resource.getrusage``: torch's allocations are
invisible to tracemalloc) over its value after loading and making the audio, so it counts the
embedding alone (the waveform itself, 3.8 MB a minute, is in the baseline). Speech trimming is off
(``vad=False``): the numbers are the encoder's.

Batching: ``--files`` utterances of uniformly random 2-10 s lengths, embedded with ``embed_batch``
(padded batches sorted by length) and with a loop of ``embed`` (as ``embed_batch`` was), files/s.

``--no-record`` prints the tables without writing BENCHMARKS.md (smoke runs: ``--minutes 0.05
--files 4 --no-record``).
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _record import record, table  # noqa: E402

import numpy as np  # noqa: E402


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    from sslspeaker.data.synth import make_voice, synthesize

    base = synthesize(make_voice(0, seed), min(20.0, seconds), seed=seed)
    return np.resize(base, int(seconds * 16000)).astype(np.float32)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(args) -> None:
    """One length, one mode, in this process: prints {seconds, peak_mb} as JSON."""
    import torch

    from sslspeaker.inference import SpeakerEncoder

    model = SpeakerEncoder.load(args.model, "cpu", vad=False)
    if args.mode == "unchunked":
        model.chunk_seconds = float("inf")
    x = speech(args.child * 60)
    model.embed(x[:32000])  # warm up
    base = peak_mb()
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.embed(x)
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": peak_mb() - base}))


def long_audio(args) -> list[dict]:
    rows = []
    for minutes in args.minutes:
        row = {"audio": f"{minutes:g} min"}
        for mode in ("chunked", "unchunked"):
            if mode == "unchunked" and minutes > args.unchunked_max:
                row[f"{mode} s"] = row[f"{mode} MB"] = "not run"
                continue
            cmd = [sys.executable, __file__, "--child", str(minutes), "--mode", mode]
            cmd += ["--model", args.model] if args.model else []
            out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
            row[f"{mode} s"], row[f"{mode} MB"] = f"{out['seconds']:.1f}", f"{out['peak_mb']:.0f}"
        rows.append(row)
        print(row, flush=True)
    return rows


def batching(args) -> dict:
    from sslspeaker.inference import SpeakerEncoder

    model = SpeakerEncoder.load(args.model, "cpu", vad=False)
    rng = np.random.default_rng(0)
    base = speech(10.0, seed=1)
    waves = [np.resize(np.roll(base, int(rng.integers(16000))), int(rng.uniform(2, 10) * 16000)) for _ in range(args.files)]
    model.embed_batch(waves[:2])  # warm up
    t0 = time.perf_counter()
    batched = model.embed_batch(waves)
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    looped = np.stack([model.embed(w) for w in waves])
    t_loop = time.perf_counter() - t0
    return {"files": args.files, "looped files/s": f"{args.files / t_loop:.1f}",
            "batched files/s": f"{args.files / t_batch:.1f}", "speed-up": f"{t_loop / t_batch:.2f}x",
            "max |batched - looped|": f"{np.abs(batched - looped).max():.1e}"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 20, 60])
    p.add_argument("--unchunked-max", type=float, default=20.0, help="longest audio also run unchunked (minutes)")
    p.add_argument("--files", type=int, default=200)
    p.add_argument("--model", default=None)
    p.add_argument("--no-record", action="store_true")
    p.add_argument("--child", type=float, default=None, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="chunked", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        return child(args)
    rows = long_audio(args)
    batch = batching(args)
    body = ("Whole-file embedding (one process per length; MB: growth of peak RSS while embedding):\n\n"
            + table(rows, ["audio", "chunked s", "chunked MB", "unchunked s", "unchunked MB"])
            + "\n\nFiles of 2-10 s, batched (`embed_batch`) against one at a time (`embed`):\n\n"
            + table([batch], list(batch)))
    if args.no_record:
        print(body)
    else:
        record("inference_scale", "Inference at scale: long audio (time, peak memory) and batched files/s", body)


if __name__ == "__main__":
    main()
