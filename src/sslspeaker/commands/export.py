"""`sslspeaker export`."""

from __future__ import annotations

import argparse


def _check_arguments(args: argparse.Namespace) -> None:
    if args.threshold is not None and args.trials:
        raise ValueError("give either --threshold or --trials (which computes the threshold), not both")
    if args.audio_root and not args.trials:
        raise ValueError("--audio-root goes with --trials")


def _dev_threshold(args: argparse.Namespace) -> tuple[float, str]:
    """The dev EER threshold of full-utterance cosine scoring on ``--trials``, and where it came from."""
    from ..evaluation.evaluate import evaluate
    from ..inference.model import SpeakerEncoder

    model = SpeakerEncoder.load(args.source, args.device)
    res = evaluate(model, args.trials, args.audio_root, protocol="full",
                   cache=False if args.no_cache else args.cache, progress=not args.quiet)
    threshold = res["eer_threshold"]
    print(f"dev EER {res['eer']:.3f}% at threshold {threshold:.4f} on {res['n_trials']} trials")
    return threshold, (f"dev EER threshold on {res['trials']['path']} (sha256 {res['trials']['sha256'][:12]}, "
                       f"{res['n_trials']} trials, full-utterance cosine, EER {res['eer']:.3f}%)")


def _write_onnx(args: argparse.Namespace, path) -> None:
    from ..errors import MissingExtraError

    try:
        from ..inference.onnx_export import export_onnx

        onnx_path = export_onnx(path, args.onnx, include_features=not args.onnx_features_in)
    except ImportError as exc:
        raise MissingExtraError(f"--onnx needs the export extra: pip install 'sslspeaker[export]' ({exc})") from None
    print(f"onnx -> {onnx_path} (input: {'log-mel features' if args.onnx_features_in else 'waveform'} [B, T])")


def run(args: argparse.Namespace) -> int:
    from ..training.export import export_model

    _check_arguments(args)
    threshold, source = args.threshold, ("given at export (--threshold)" if args.threshold is not None else None)
    if args.trials:
        threshold, source = _dev_threshold(args)
    path = export_model(args.source, args.out, threshold=threshold, threshold_source=source)
    print(f"model -> {path}" + (f" (threshold {threshold:.4f})" if threshold is not None else " (no threshold)"))
    if args.onnx:
        _write_onnx(args, path)
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
