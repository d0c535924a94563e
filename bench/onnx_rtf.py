"""Real-time factor of the torch ``SpeakerEncoder`` and the onnxruntime ``OnnxSpeakerEncoder`` at 1 and 2 threads.

Exports MODEL (default: the packaged default model) to ONNX, then embeds the same synthetic
clips (``--seconds`` long, ``--clips`` of them, after ``--warmup`` untimed ones) with each engine
at each thread count, one clip at a time as ``embed`` does. RTF = compute seconds / audio
seconds (lower is faster); the table also gives each engine's speed-up over torch at the same
thread count and the largest embedding difference between the two. Writes the "ONNX speed"
section of BENCHMARKS.md unless ``--no-record``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sslspeaker.data.synth import make_voice, synthesize
from sslspeaker.inference import SpeakerEncoder
from sslspeaker.inference.onnx_export import export_onnx
from sslspeaker.inference.onnx_model import OnnxSpeakerEncoder

from _record import record, table


def clips(n: int, seconds: float) -> list[np.ndarray]:
    return [synthesize(make_voice(7, i), seconds, seed=i).astype(np.float32) for i in range(n)]


def timed_rtf(embed, waves: list[np.ndarray], warmup: int) -> tuple[float, np.ndarray]:
    """(compute seconds / audio seconds over ``waves[warmup:]``, after the untimed ``waves[:warmup]``; embeddings)."""
    for w in waves[:warmup]:
        embed(w)
    timed = waves[warmup:]
    t0 = time.perf_counter()
    out = np.stack([embed(w) for w in timed])
    return (time.perf_counter() - t0) / (sum(len(w) for w in timed) / 16000), out


def rows_for(model_path, onnx_path: Path, waves: list[np.ndarray], threads: list[int], warmup: int) -> list[dict]:
    rows = []
    for n in threads:
        torch.set_num_threads(n)
        torch_rtf, e_torch = timed_rtf(SpeakerEncoder.load(model_path).embed, waves, warmup)
        onnx_rtf, e_onnx = timed_rtf(OnnxSpeakerEncoder.load(onnx_path, threads=n).embed, waves, warmup)
        rows.append({"threads": n, "torch RTF": f"{torch_rtf:.4f}", "onnxruntime RTF": f"{onnx_rtf:.4f}",
                     "onnxruntime speed-up": f"{torch_rtf / onnx_rtf:.2f}x",
                     "max |embedding difference|": f"{float(np.abs(e_torch - e_onnx).max()):.1e}"})
        print(json.dumps(rows[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=None, help="a .safetensors model (default: the packaged default)")
    ap.add_argument("--seconds", type=float, default=3.0, help="clip length in seconds (default 3)")
    ap.add_argument("--clips", type=int, default=50, help="timed clips per engine and thread count (default 50)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed clips first (default 3)")
    ap.add_argument("--threads", default="1,2", help="thread counts, comma-separated (default 1,2)")
    ap.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args()
    waves = clips(args.clips + args.warmup, args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(SpeakerEncoder.load(args.model), Path(tmp) / "m.onnx")
        rows = rows_for(args.model, onnx_path, waves, [int(t) for t in args.threads.split(",")], args.warmup)
    if args.no_record:
        return
    body = table(rows, list(rows[0])) + (
        f"\n\n{args.clips} synthetic {args.seconds:g}-s clips embedded one at a time (`embed`), after "
        f"{args.warmup} untimed ones; RTF = compute seconds / audio seconds. The ONNX graph includes the "
        "log-mel front end (conv1d DFT) and is written by `export_onnx` with the current exporter.")
    record("onnx_rtf", "ONNX speed: torch vs onnxruntime", body)


if __name__ == "__main__":
    main()
