"""C3-MoCo's epoch-end k-means at VoxCeleb2 scale: is it shorter than the epoch it follows?

Issue 5: 1 M embeddings must not take longer than an epoch. Times ``methods.clustering.kmeans``
(the trainer's own) on N unit-norm 256-d embeddings drawn around ``--speakers`` centres, for
each k, on the default device (CUDA when present); ``--iters`` Lloyd iterations are timed and
the recipe's full cost (``cluster_iters`` iterations plus the final assignment, summed over
its ks) is projected from the measured time per pass. The epoch it is compared with is N
utterances at the C3-MoCo development row's examples/s on this kind of machine
(``bench/results/dev_protocol.jsonl``).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from sslspeaker.config import load_config
from sslspeaker.methods.clustering import kmeans

from _record import hardware_kind, record, table

ROOT = Path(__file__).resolve().parents[1]


def embeddings(n: int, dim: int, speakers: int, device: torch.device) -> torch.Tensor:
    """Unit vectors around ``speakers`` random centres (a speaker-like structure, seeded)."""
    g = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(speakers, dim, generator=g), dim=1)
    x = centres[torch.randint(speakers, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g) / dim**0.5
    return torch.nn.functional.normalize(x, dim=1).to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--speakers", type=int, default=5994, help="VoxCeleb2 dev speakers")
    ap.add_argument("--k", default=None, help="comma-separated ks (default: the C3-MoCo VoxCeleb2 recipe's)")
    ap.add_argument("--iters", type=int, default=2, help="Lloyd iterations timed per k")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    recipe = load_config(ROOT / "configs" / "c3_moco_voxceleb2.yaml").method.options
    ks = [int(k) for k in args.k.split(",")] if args.k else list(recipe["n_clusters"])
    full_iters = int(recipe.get("cluster_iters", 20))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = embeddings(args.n, args.dim, args.speakers, device)
    rows, projected = [], 0.0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for k in ks:
        sync()
        t0 = time.perf_counter()
        kmeans(x, k, seed=0, n_iter=0)  # k-means++ initialisation and one assignment of every point
        sync()
        t_init = time.perf_counter() - t0
        t0 = time.perf_counter()
        kmeans(x, k, seed=0, n_iter=args.iters)
        sync()
        per_iter = max(0.0, time.perf_counter() - t0 - t_init) / args.iters
        full = t_init + per_iter * full_iters
        projected += full
        rows.append({"k": k, "init + assignment s": round(t_init, 1), "s per Lloyd iteration": round(per_iter, 1),
                     f"projected s ({full_iters} iterations)": round(full, 1)})
        print(rows[-1], flush=True)
    hw = hardware_kind(device)
    dev_rows = [json.loads(l) for l in open(ROOT / "bench" / "results" / "dev_protocol.jsonl")]
    c3 = next((r for r in dev_rows if r["recipe"] == "c3_moco_speechocean762.yaml" and r.get("cpu") == hw), None)
    epoch = args.n / c3["examples/s"] if c3 else None
    body = table(rows, list(rows[0]))
    body += (f"\n\n{args.n:,} unit-norm {args.dim}-d embeddings around {args.speakers:,} centres on {hw}; "
             f"`kmeans` (torch backend, the trainer's) timed with `n_iter=0` (k-means++ on a subsample and one "
             f"assignment of every point) and with `n_iter={args.iters}`; the recipe's cost "
             f"({full_iters} iterations for each k of `configs/c3_moco_voxceleb2.yaml`) is projected from the "
             f"time per iteration: **{projected / 60:.1f} min per epoch end**")
    if epoch:
        body += (f", against {epoch / 3600:.1f} h for an epoch of {args.n:,} utterances at the C3-MoCo development "
                 f"row's {c3['examples/s']} examples/s on the same machine ({projected / epoch:.0%} of it).")
    else:
        body += "; no C3-MoCo development row on this kind of machine to compare an epoch with."
    if args.no_record:
        print(body)
    else:
        record("clustering" + ("_gpu" if device.type == "cuda" else ""),
               "C3-MoCo epoch-end k-means at VoxCeleb2 scale (1 M embeddings)", body)


if __name__ == "__main__":
    main()
