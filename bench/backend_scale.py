"""LDA and PLDA back-end cost at VoxCeleb2 scale: 1 M synthetic 256-d embeddings of ~6,000 speakers.

Speakers are Gaussian (x = y_s + e, random between / within covariances, float32 as an embedding
cache holds them). Times, on the CPU (the back-ends are numpy / scipy / scikit-learn): whitening
fit, PLDA statistics and EM fit, PLDA scoring of ``--trials`` random pairs, LDA fit (scikit-learn)
and projection; and, as a check that the fitted model is sound, the PLDA EER on trials between
``--test-speakers`` fresh speakers.
"""

import argparse
import time

from _record import cpu_kind, record, table

import numpy as np

from sslspeaker.backends import build_backend
from sslspeaker.backends.stats import scatter, speaker_sums
from sslspeaker.evaluation.metrics import compute_eer


def covariances(rng, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(Cholesky factor of Σ_b, of Σ_w): random rotations of decaying spectra, speakers in a 150-d subspace."""
    def factor(scales):
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        return (q * np.sqrt(scales)).astype(np.float32)

    between = np.r_[np.geomspace(0.2, 0.01, min(150, dim)), np.full(max(0, dim - 150), 1e-3)]
    return factor(between), factor(np.geomspace(2.0, 0.05, dim))


def speakers(rng, factors, n: int, n_speakers: int) -> tuple[np.ndarray, np.ndarray]:
    """n float32 embeddings of n_speakers speakers (uneven counts) and their labels."""
    chol_b, chol_w = factors
    dim = len(chol_b)
    y = rng.standard_normal((n_speakers, dim), dtype=np.float32) @ chol_b.T
    labels = np.sort(rng.integers(0, n_speakers, n))
    x = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        part = slice(start, min(n, start + 100_000))
        x[part] = y[labels[part]] + rng.standard_normal((part.stop - part.start, dim), dtype=np.float32) @ chol_w.T
    return x, labels


def timed(rows: list, what: str, fn, **extra):
    t0 = time.perf_counter()
    out = fn()
    rows.append({"step": what, "seconds": round(time.perf_counter() - t0, 2), **extra})
    print(rows[-1], flush=True)
    return out


def run(args) -> tuple[list, float]:
    rng = np.random.default_rng(0)
    factors = covariances(rng, args.dim)
    rows: list = []
    x, labels = timed(rows, f"make {args.n:,} x {args.dim} embeddings", lambda: speakers(rng, factors, args.n,
                                                                                       args.speakers))
    timed(rows, "whiten: fit", lambda: build_backend("whiten").fit(x, labels))
    index = labels
    timed(rows, "plda: statistics (counts, sums, scatter)",
          lambda: (speaker_sums(x, index, args.speakers), scatter(x)))
    plda = timed(rows, f"plda: fit ({args.iterations} EM iterations, statistics included)",
                 lambda: build_backend("plda", iterations=args.iterations).fit(x, labels))
    pairs = rng.integers(0, args.n, (2, args.trials))
    timed(rows, f"plda: score {args.trials:,} pairs", lambda: plda.score_pairs(x[pairs[0]], x[pairs[1]]))
    lda = timed(rows, f"lda: fit to {args.lda_dim} dims (scikit-learn, svd)",
                lambda: build_backend("lda", dim=args.lda_dim).fit(x, labels))
    timed(rows, f"lda: project {args.n:,}", lambda: lda.transform(x))
    test_x, test_labels = speakers(rng, factors, args.test_speakers * 10, args.test_speakers)
    i, j = np.triu_indices(len(test_x), k=1)
    eer = compute_eer(plda.score_pairs(test_x[i], test_x[j]), test_labels[i] == test_labels[j])[0]
    return rows, eer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--speakers", type=int, default=5994, help="VoxCeleb2 dev speakers")
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--trials", type=int, default=1_000_000)
    ap.add_argument("--lda-dim", type=int, default=200)
    ap.add_argument("--test-speakers", type=int, default=100)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    rows, eer = run(args)
    body = table(rows, ["step", "seconds"])
    body += (f"\n\n{args.n:,} float32 {args.dim}-d synthetic Gaussian embeddings of {args.speakers:,} speakers on "
             f"{cpu_kind()} (numpy / scipy / scikit-learn, CPU only). PLDA EER (raw embeddings, no pre-processing) "
             f"on all pairs of {args.test_speakers} fresh speakers x 10 utterances: {eer:.2%}.")
    if args.no_record:
        print(body)
    else:
        record("backend_scale", "LDA / PLDA back-end cost at VoxCeleb2 scale (1 M embeddings)", body)


if __name__ == "__main__":
    main()
