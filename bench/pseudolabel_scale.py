"""The pseudo-label stage's clustering at VoxCeleb2 scale: k-means, the member filter and the count estimate.

Times ``sslspeaker.pseudolabel`` on N unit-norm D-d embeddings drawn around ``--speakers``
centres (``bench/clustering.py``'s generator), on the default device (CUDA when present): the
k-means of each available backend (torch, and faiss when installed) with ``--iters`` Lloyd
iterations at k = ``--k``, the member filter on its result, and the ``--clusters auto``
eigengap estimate (NME-SC) on its ``--estimate-points`` subsample. Embedding the pool is not
timed (it is the model's cost, not the stage's).
"""

import argparse
import time

from _record import hardware_kind, record, table
from clustering import embeddings

import torch

from sslspeaker.pseudolabel.cluster import faiss_available, kmeans_labels
from sslspeaker.pseudolabel.estimate import estimate_clusters
from sslspeaker.pseudolabel.filter import filter_members


TITLE = "Pseudo-label clustering at VoxCeleb2 scale (1 M embeddings)"


def timed(fn, device: torch.device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - t0


def stage_rows(x, args, device: torch.device) -> list[dict]:
    rows = []
    for backend in ["torch"] + (["faiss"] if faiss_available() else []):
        labels, t_kmeans = timed(lambda: kmeans_labels(x, args.k, backend=backend, device=str(device),
                                                       n_iter=args.iters)[0], device)
        kept, t_filter = timed(lambda: filter_members(x, labels), device)
        rows.append({"stage": f"k-means ({backend}, k={args.k}, {args.iters} iterations)", "s": round(t_kmeans, 1),
                     "result": f"{len(set(labels.tolist()))} clusters"})
        rows.append({"stage": "member filter", "s": round(t_filter, 1), "result": f"{int(kept.keep.sum())} kept"})
    est, t_est = timed(lambda: estimate_clusters(x, max_points=args.estimate_points), device)
    rows.append({"stage": f"count estimate (NME-SC eigengap, {est.points} points)", "s": round(t_est, 1),
                 "result": f"k = {est.k}"})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--speakers", type=int, default=5994, help="VoxCeleb2 dev speakers")
    ap.add_argument("--k", type=int, default=6000)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--estimate-points", type=int, default=3000)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = embeddings(args.n, args.dim, args.speakers, device).cpu().numpy()
    rows = stage_rows(x, args, device)
    body = table(rows, ["stage", "s", "result"])
    body += (f"\n\n{args.n:,} unit-norm {args.dim}-d embeddings around {args.speakers:,} centres on "
             f"{hardware_kind(device)}; `sslspeaker.pseudolabel` stages timed one after another.")
    name = "pseudolabel_scale_gpu" if device.type == "cuda" else "pseudolabel_scale"
    if args.no_record:
        print(body)
        return
    record(name, TITLE, body)


if __name__ == "__main__":
    main()
