"""`sslspeaker export`."""

from __future__ import annotations

import argparse


def _check_arguments(args: argparse.Namespace) -> None:
    if not args.out and not args.onnx:
        raise ValueError("give --out MODEL.safetensors, --onnx MODEL.onnx or both")
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


def _onnx_source(args: argparse.Namespace, threshold: float | None, source: str | None):
    """The model the ONNX graph is made of: the written model file, else the source with a new threshold set."""
    from ..inference.model import SpeakerEncoder

    model = SpeakerEncoder.load(args.out or args.source, "cpu")
    if not args.out and threshold is not None:
        model.metadata.pop("prior", None)
        model.metadata.update(threshold=float(threshold), threshold_source=source)
    return model


def _write_onnx(args: argparse.Namespace, threshold: float | None, source: str | None) -> None:
    from ..errors import MissingExtraError

    try:
        import onnx  # noqa: F401

        from ..inference.onnx_export import export_onnx
    except ImportError as exc:
        raise MissingExtraError(f"--onnx needs the export extra: pip install 'sslspeaker[export]' ({exc})") from None
    model = _onnx_source(args, threshold, source)
    onnx_path = export_onnx(model, args.onnx, include_features=not args.onnx_features_in)
    shape = "log-mel features [batch, n_mels, frames]" if args.onnx_features_in else "waveform [batch, samples]"
    print(f"onnx -> {onnx_path} (input: {shape}; output: embedding [batch, {model.embed_dim}])")


def run(args: argparse.Namespace) -> int:
    from ..inference.model_file import read_model_file
    from ..training.export import export_model

    _check_arguments(args)
    threshold, source = args.threshold, ("given at export (--threshold)" if args.threshold is not None else None)
    if args.trials:
        threshold, source = _dev_threshold(args)
    if args.out:
        path = export_model(args.source, args.out, threshold=threshold, threshold_source=source)
        kept = read_model_file(path)[1].get("threshold")  # a model file's own, when none was given
        print(f"model -> {path}" + (f" (threshold {kept:.4f})" if kept is not None else " (no threshold)"))
    if args.onnx:
        _write_onnx(args, threshold, source)
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="training run/checkpoint/model file -> a self-contained .safetensors model "
                                      "and/or an ONNX graph")
    p.add_argument("source", help="training run folder, .pt checkpoint or .safetensors model file (the packaged "
                                  "default included: src/sslspeaker/pretrained/default.safetensors)")
    p.add_argument("--out", help="model file to write (.safetensors); a model file's back-end, threshold and prior "
                                 "are kept unless --threshold or --trials gives a new threshold")
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
