"""Encoder cost on CPU: training throughput, inference real-time factor, peak memory.

For each encoder, each measurement runs in a fresh subprocess so that its peak RSS
(``ru_maxrss``) is its own; "memory" is the peak RSS minus the RSS of that process after its
imports, i.e. weights + gradients + activations + workspace.
  train   forward + backward of the encoder alone (loss = mean squared embedding), train mode,
          batch 32 of 2-s crops (201 frames); fp32, and bf16 autocast (channels-last for 2-D nets)
  infer   one 10-s utterance, waveform -> log-mel -> embedding (eval, inference_mode);
          real-time factor = seconds of audio per second of compute (higher is faster); with
          ONNX Runtime too when it is installed (the exported graph, front end included)
GFLOP is the encoder's forward pass on one 2-s crop (torch FlopCounterMode).
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _record import record, table

# key -> (encoder name, options, label)
ENCODERS = {
    "fast_resnet34": ("fast_resnet34", {"n_mels": 40}, "Fast ResNet-34 (40 mels, 256-d, SAP)"),
    "resnet34": ("resnet34", {"n_mels": 80}, "ResNet-34 (80 mels, 256-d, TSTP)"),
    "ecapa512": ("ecapa_tdnn", {"n_mels": 80, "channels": 512}, "ECAPA-TDNN C=512 (80 mels, 192-d)"),
    "ecapa1024": ("ecapa_tdnn", {"n_mels": 80, "channels": 1024}, "ECAPA-TDNN C=1024 (80 mels, 192-d)"),
    "tdnn": ("tdnn", {"n_mels": 80}, "TDNN x-vector (80 mels, 512-d)"),
}
BATCH, FRAMES, UTT_SECONDS = 32, 201, 10.0


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(key: str, mode: str, steps: int, warmup: int) -> dict:
    import torch

    from sslspeaker.features.mel import LogMel
    from sslspeaker.models import build_encoder

    name, opts, _ = ENCODERS[key]
    base = rss_mb()
    torch.manual_seed(0)
    enc = build_encoder(name, **opts)
    n_mels = enc.n_mels
    if mode.startswith("train"):
        bf16 = mode == "train_bf16"
        if bf16 and any(isinstance(m, torch.nn.Conv2d) for m in enc.modules()):
            enc = enc.to(memory_format=torch.channels_last)
        enc.train()
        x = torch.randn(BATCH, n_mels, FRAMES)
        times = []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = enc(x).pow(2).mean()
            loss.backward()
            enc.zero_grad(set_to_none=True)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        # median step: robust to one step disturbed by other work on a shared machine
        return {"examples/s": BATCH / statistics.median(times), "memory_mb": rss_mb() - base}
    # inference: full 10-s utterance through the front end and the encoder
    from sslspeaker.data.synth import make_voice, synthesize

    feats = LogMel(n_mels=n_mels, norm="instance").eval()
    enc.eval()
    wave = torch.from_numpy(synthesize(make_voice(0, 0), UTT_SECONDS, seed=0))[None].float()

    def timed(fn, repeats):
        fn()
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
        return statistics.median(out)

    with torch.inference_mode():
        sec = timed(lambda: enc(feats(wave)), steps + 2)
    res = {"rtf": UTT_SECONDS / sec, "memory_mb": rss_mb() - base}
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        enc(torch.randn(1, n_mels, FRAMES))
    res["gflop"] = counter.get_total_flops() / 1e9
    res["params"] = sum(p.numel() for p in enc.parameters())
    try:
        import onnxruntime as ort

        from sslspeaker.inference.onnx_export import export_onnx
    except ImportError:
        return res
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(enc, Path(tmp) / "m.onnx", features=feats)
        so = ort.SessionOptions()
        so.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        x = wave.numpy()
        res["onnx_rtf"] = UTT_SECONDS / timed(lambda: sess.run(None, {"waveform": x}), steps + 2)
    return res


def run_worker(key: str, mode: str, args) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, __file__, "--worker", key, "--mode", mode, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", default=",".join(ENCODERS))
    ap.add_argument("--steps", type=int, default=3, help="timed training steps / inference repeats (+2)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-record", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(worker(args.worker, args.mode, args.steps, args.warmup)))
        return
    rows = []
    for key in args.encoders.split(","):
        fp32, bf16, inf = (run_worker(key, m, args) for m in ("train_fp32", "train_bf16", "infer"))
        rows.append({
            "encoder": ENCODERS[key][2], "params (M)": f"{inf['params'] / 1e6:.2f}",
            "GFLOP / 2-s crop": f"{inf['gflop']:.2f}",
            "train ex/s fp32": f"{fp32['examples/s']:.1f}", "train ex/s bf16": f"{bf16['examples/s']:.1f}",
            "train peak MB fp32 / bf16": f"{fp32['memory_mb']:.0f} / {bf16['memory_mb']:.0f}",
            "infer RTF (torch)": f"{inf['rtf']:.0f}x", "infer RTF (ONNX RT)": f"{inf['onnx_rtf']:.0f}x"
            if "onnx_rtf" in inf else "n/a", "infer peak MB": f"{inf['memory_mb']:.0f}",
        })
        print(rows[-1], flush=True)
    body = table(rows, list(rows[0]))
    body += (f"\n\nTraining: encoder forward + backward only, batch {BATCH} x {FRAMES} frames (2-s crops), "
             f"median of {args.steps} timed steps after {args.warmup} warm-up; bf16 = autocast (pooling and embedding "
             f"layer stay fp32), channels-last for the 2-D nets. Inference: one {UTT_SECONDS:.0f}-s utterance, "
             "log-mel (instance norm) + encoder, fp32, median of the repeats; RTF = seconds of audio per second "
             "of compute. Peak MB = peak RSS minus the RSS after imports, each measurement in its own process. "
             f"{args.threads} threads.")
    if not args.no_record:
        record("encoders", f"Encoders: training and inference cost ({args.threads} CPU threads)", body)
    else:
        print(body)


if __name__ == "__main__":
    main()
