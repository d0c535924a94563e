"""`sslspeaker pseudolabel`."""

from __future__ import annotations

import argparse


def _options(args: argparse.Namespace):
    from ..pseudolabel import PseudoLabelOptions

    return PseudoLabelOptions(
        clusters=args.clusters, encoder=args.encoder, algorithm=args.algorithm, linkage=args.linkage, kmeans_backend=args.kmeans_backend,
        device=args.device, seed=args.seed, min_cluster_size=args.min_cluster_size,
        drop_mads=None if args.drop_mads <= 0 else args.drop_mads, min_margin=args.min_margin,
        estimate_points=args.estimate_points, max_clusters=args.max_clusters,
        max_cluster_share=args.max_cluster_share, max_singleton_share=args.max_singleton_share,
        max_mean_cosine=args.max_mean_cosine, force=args.force)


def run(args: argparse.Namespace) -> int:
    from ..pseudolabel import pseudolabel

    report = pseudolabel(args.model, args.data, args.out, _options(args))
    c, kept, dropped = report["clustering"], report["kept"], report["dropped"]
    how = "estimated (eigengap, NME-SC)" if c["k_found_by"]["source"] == "auto" else "given"
    print(f"{report['data']['utterances']} utterances -> {c['clusters']} clusters ({c['algorithm']}/{c['backend']}, "
          f"k = {c['k']} {how}; largest {c['largest']}, median {c['median']:g}, {c['singletons']} singletons)")
    reasons = ", ".join(f"{n} {r}" for r, n in dropped["by_reason"].items() if n) or "none"
    print(f"kept {kept['utterances']} utterances in {kept['clusters']} pseudo-speakers; dropped "
          f"{dropped['utterances']} ({reasons})")
    diag = report.get("diagnostics")
    if diag and diag["kept"]:
        d = diag["kept"]
        print(f"against the manifest's {d['speakers']} speakers (report only): NMI {d['nmi']:.3f}  "
              f"ARI {d['ari']:.3f}  purity {d['purity']:.3f}")
    print(f"wrote {args.out}/manifest.csv, embeddings.npy, embedding_ids.csv, report.json")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("pseudolabel", help="cluster a pool of unlabelled speech into pseudo-speakers "
                                           "(a manifest for supervised training)")
    p.add_argument("--model", help="a .safetensors model, a .pt checkpoint or a training run folder "
                                   "(default: the model bundled with the package)")
    p.add_argument("--data", required=True, help="the pool: a manifest CSV (its speaker column, if any, is read "
                                                 "for the report's diagnostics only)")
    p.add_argument("--encoder", default="auto", choices=["auto", "inference", "online", "momentum"],
                   help="run folders: which encoder embeds the pool; auto = the momentum (key / teacher) encoder "
                        "of MoCo or DINO when there is one, else the method's inference encoder (default auto)")
    p.add_argument("--clusters", default="auto", help="number of clusters, or 'auto' to estimate it by the "
                                                      "normalised maximum eigengap, NME-SC (default auto)")
    p.add_argument("--algorithm", default="kmeans", choices=["kmeans", "ahc"],
                   help="kmeans (any size) or ahc: agglomerative, for pools up to 20,000 utterances")
    p.add_argument("--out", required=True, help="output folder: manifest.csv, report.json, embeddings.npy")
    p.add_argument("--force", action="store_true", help="overwrite a result already in --out")
    p.add_argument("--linkage", default="average", choices=["average", "ward"], help="ahc linkage (default average)")
    p.add_argument("--kmeans-backend", default="auto", choices=["auto", "torch", "faiss"],
                   help="k-means library: auto = faiss when installed, else torch (default auto)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    p.add_argument("--seed", type=int, default=0, help="k-means initialisation and subsample seed (default 0)")
    p.add_argument("--min-cluster-size", type=int, default=2,
                   help="drop clusters with fewer members left than this (default 2)")
    p.add_argument("--drop-mads", type=float, default=3.0,
                   help="drop members whose cosine to their centroid is this many robust deviations below "
                        "their cluster's median (default 3; 0 turns it off)")
    p.add_argument("--min-margin", type=float, default=None,
                   help="also drop members closer than this (cosine) to a second centroid (default off)")
    p.add_argument("--estimate-points", type=int, default=3000,
                   help="auto: subsample size of the estimate (default 3000)")
    p.add_argument("--max-clusters", type=int, default=None, help="auto: the largest count tried "
                                                                  "(default half the subsample)")
    p.add_argument("--max-cluster-share", type=float, default=0.5,
                   help="refuse a clustering whose largest cluster holds more of the pool (default 0.5)")
    p.add_argument("--max-singleton-share", type=float, default=0.5,
                   help="refuse a clustering with more of the pool alone in its cluster (default 0.5)")
    p.add_argument("--max-mean-cosine", type=float, default=0.95,
                   help="refuse a model whose embeddings' mean pairwise cosine is above this (default 0.95)")
    p.set_defaults(func=run)
