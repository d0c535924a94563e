"""`sslspeaker evaluate`."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..evaluation.evaluate import evaluate
    from ..inference.model import SpeakerEncoder

    if args.score_norm == "asnorm" and not args.cohort:
        raise ValueError("--score-norm asnorm needs --cohort MANIFEST (utterances of other speakers)")
    _check_backend_arguments(args)
    model = SpeakerEncoder.load(args.model, args.device, vad=not args.no_vad)
    res = evaluate(model, args.trials, args.audio_root, protocol=args.protocol, out=args.out,
                   cache=False if args.no_cache else args.cache, score_norm=args.score_norm,
                   cohort=args.cohort, top_k=args.top_k, progress=not args.quiet,
                   embedding_norm=args.embedding_norm, norm_data=args.norm_data,
                   backend=args.backend, backend_data=args.backend_data, scp=args.scp, enrolment=args.enroll,
                   scores_file=args.scores)
    proto = res["protocol"]
    norm = f" + AS-norm (top {res['score_norm']['effective_top_k']} of {res['score_norm']['cohort_size']})" \
        if res["score_norm"] else ""
    t = res["trials"]
    print(f"{t['n_trials']} trials ({t['targets']} target, {t['nontargets']} non-target), "
          f"protocol {proto['name']} {proto['params']}{norm}")
    en = res["embedding_norm"]
    if en:
        where = f"the {en['utterances']} trial utterances" if en["data"] == "trials" else \
            f"{en['utterances']} utterances of {en['manifest']}"
        print(f"embedding norm {en['name']} over {where}")
    print(backend_line(res["backend_info"]))
    print(f"EER {res['eer']:.3f}% (threshold {res['eer_threshold']:.4f})  "
          f"minDCF(0.01) {res['min_dcf_0.01']:.4f}  minDCF(0.05) {res['min_dcf_0.05']:.4f}")
    if "cllr" in res:
        print(f"Cllr {res['cllr']:.4f}  min Cllr {res['min_cllr']:.4f}  actual DCF(0.01) {res['act_dcf_0.01']:.4f}")
    else:
        print(f"min Cllr {res['min_cllr']:.4f} (scores are not calibrated log-likelihood ratios)")
    e = res["embedding"]
    print(f"embeddings: {e['computed']} computed, {e['from_cache']} from cache"
          + (f" ({e['cache']})" if e["cache"] else ""))
    print(f"results: {args.out}  plots: {res['plots']['scores']}, {res['plots']['det']}"
          + (f"  per-trial scores: {args.scores}" if args.scores else ""))
    return 0


def _check_backend_arguments(args: argparse.Namespace) -> None:
    from ..backends import PRESETS

    if args.backend in PRESETS and not args.backend_data:
        raise ValueError(f"--backend {args.backend} is fitted on labelled embeddings: give --backend-data MANIFEST "
                         "(its speaker column, real or pseudo labels, gives the classes)")
    if args.backend_data and args.backend not in PRESETS:
        raise ValueError(f"--backend-data goes with --backend {'|'.join(PRESETS)} (not {args.backend})")


def backend_line(info: dict) -> str:
    """``back-end whiten+lengthnorm+plda (model file, calibrated)``."""
    where = info["source"] + (f" on {info['data']['utterances']} utterances of {info['data']['speakers']} speakers"
                              if "data" in info else "")
    return f"back-end {info['name']} ({where}{', calibrated' if info['calibrated'] else ''})"


def add_parser(sub) -> None:
    from ..evaluation.protocols import PROTOCOLS

    p = sub.add_parser("evaluate", help="speaker-verification EER/minDCF of a model on a trial list")
    p.add_argument("--model", help="a .safetensors model, a .pt checkpoint or a training run folder "
                                   "(default: the model bundled with the package)")
    p.add_argument("--trials", required=True, help="trial list: VoxCeleb's 'LABEL A B' (LABEL 1 same speaker, 0 not) "
                                                   "or Kaldi's 'A B target|nontarget' per line; A and B are paths, "
                                                   "--scp ids or (A) --enroll models")
    p.add_argument("--audio-root", help="folder the trial list's relative paths are relative to (default: its folder)")
    p.add_argument("--scp", help="Kaldi wav.scp ('ID PATH' per line): trial and enrolment names that are its ids "
                                 "are read from its paths")
    p.add_argument("--enroll", help="enrolment list, Kaldi's spk2utt ('MODEL UTT1 UTT2 ...' per line): a trial side "
                                    "naming MODEL is scored as the mean of its utterances' embeddings, length-normalised")
    p.add_argument("--scores", help="also write the per-trial scores to this file ('A B SCORE target|nontarget' per "
                                    "line, in trial-list order) for fusion and calibration")
    p.add_argument("--protocol", default="full", choices=list(PROTOCOLS),
                   help="full: whole-utterance embedding; mocovox10x10: 10 random 4-s segments, mean of 10x10 "
                        "cosines; clova10crop: 10 evenly spaced 400-frame crops (clovaai voxceleb_trainer)")
    p.add_argument("--out", default="results.json", help="results JSON; plots go next to it (default: results.json)")
    p.add_argument("--cache", default=None, help="embedding cache folder (default ~/.cache/sslspeaker)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
    p.add_argument("--score-norm", default="none", choices=["none", "asnorm"], help="score normalisation")
    p.add_argument("--cohort", help="asnorm: manifest CSV of cohort utterances (speakers not in the trials)")
    p.add_argument("--top-k", type=int, default=200, help="asnorm: top-K cohort scores per side (default 200)")
    p.add_argument("--embedding-norm", default="none", choices=["none", "mean", "zscore"],
                   help="adapt embeddings to unlabelled in-domain speech before cosine scoring: subtract the mean "
                        "embedding of --norm-data (mean), also divide by its per-dimension std (zscore)")
    p.add_argument("--norm-data", default="trials",
                   help="the speech those statistics come from: 'trials' (the trial list's own utterances, "
                        "default) or a manifest CSV of in-domain utterances")
    p.add_argument("--backend", default="model", choices=["model", "cosine", "lda", "plda", "lda_plda"],
                   help="model: the model file's back-end (cosine when it has none; default); cosine: force "
                        "cosine; lda|plda|lda_plda: fit that back-end here on --backend-data")
    p.add_argument("--backend-data", help="manifest CSV whose speaker column (real or pseudo labels) trains "
                                          "the --backend preset, embedded with the model")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--no-vad", action="store_true",  # issue 21 (speech activity)
                   help="embed every sample (default: the full protocol embeds only the speech regions)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
