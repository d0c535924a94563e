"""`sslspeaker export`."""

from __future__ import annotations

import argparse
import sys


def run(args: argparse.Namespace) -> int:
    from ..data.audio import AudioError
    from ..inference.model import ModelError, SpeakerEncoder, export_model

    if args.threshold is not None and args.trials:
        print("error: give either --threshold or --trials (which computes the threshold), not both", file=sys.stderr)
        return 2
    if args.audio_root and not args.trials:
        print("error: --audio-root goes with --trials", file=sys.stderr)
        return 2
    threshold, source = args.threshold, ("given at export (--threshold)" if args.threshold is not None else None)
    try:
        if args.trials:
            from ..evaluation.evaluate import evaluate

            model = SpeakerEncoder.load(args.source, args.device)
            res = evaluate(model, args.trials, args.audio_root, protocol="full",
                           cache=False if args.no_cache else args.cache, progress=not args.quiet)
            threshold = res["eer_threshold"]
            source = (f"dev EER threshold on {res['trials']['path']} (sha256 {res['trials']['sha256'][:12]}, "
                      f"{res['n_trials']} trials, full-utterance cosine, EER {res['eer']:.3f}%)")
            print(f"dev EER {res['eer']:.3f}% at threshold {threshold:.4f} on {res['n_trials']} trials")
        path = export_model(args.source, args.out, threshold=threshold, threshold_source=source)
    except (FileNotFoundError, ModelError, AudioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"model -> {path}" + (f" (threshold {threshold:.4f})" if threshold is not None else " (no threshold)"))
    if args.onnx:
        try:
            from ..inference.onnx_export import export_onnx

            onnx_path = export_onnx(path, args.onnx, include_features=not args.onnx_features_in)
        except ImportError as exc:
            print(f"error: --onnx needs the export extra: pip install 'sslspeaker[export]' ({exc})", file=sys.stderr)
            return 2
        print(f"onnx -> {onnx_path} (input: {'log-mel features' if args.onnx_features_in else 'waveform'} [B, T])")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="training run/checkpoint -> a self-contained .safetensors model")
    p.add_argument("source", help="training run folder or .pt checkpoint")
    p.add_argument("--out", required=True, help="model file to write (.safetensors)")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold to store")
    p.add_argument("--trials", help="dev trial list: store its EER threshold (full-utterance cosine scoring)")
    p.add_argument("--audio-root", help="folder the trial list's paths are relative to (default: its folder)")
    p.add_argument("--cache", default=None, help="embedding cache folder (default ~/.cache/sslspeaker)")
    p.add_argument("--no-cache", action="store_true", help="do not use the embedding cache")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--onnx", help="also write an ONNX graph (dynamic batch and time) to this path")
    p.add_argument("--onnx-features-in", action="store_true",
                   help="the ONNX graph takes log-mel features [B, n_mels, frames] instead of a waveform")
    p.set_defaults(func=run)
