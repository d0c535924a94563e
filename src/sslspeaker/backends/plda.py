"""Two-covariance PLDA fitted by EM (Sizov, Lee & Kinnunen 2014, the two-covariance model; Prince & Elder 2007).

Model: x = μ + y + e, speaker variable y ~ N(0, B⁻¹) shared by a speaker's utterances, residual
e ~ N(0, W⁻¹) per utterance; Σ_b = B⁻¹ and Σ_w = W⁻¹ are stored. Everything is computed in the
basis that diagonalises both (T Σ_w Tᵀ = I, T Σ_b Tᵀ = diag ψ, from a generalised symmetric
eigenproblem, no explicit inverse), where each dimension is an independent scalar model
u = v + ε, v ~ N(0, ψ_k), ε ~ N(0, 1); so the E-step and the LLR are vectorised over all
speakers / trials at once, and the data enter only through per-speaker counts and sums and one
scatter matrix.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .base import Backend, BackendStateError, take_array
from .registry import register_backend
from .stats import CHUNK_ROWS, scatter, speaker_sums

LOG_2PI = float(np.log(2.0 * np.pi))


class Basis(NamedTuple):
    """T (rows: the basis), T⁻¹ = Σ_w Tᵀ, and ψ: T Σ_w Tᵀ = I, T Σ_b Tᵀ = diag(ψ)."""

    T: np.ndarray
    T_inv: np.ndarray
    psi: np.ndarray


class Stats(NamedTuple):
    """Per-speaker counts n_s and sums f_s, the total count N and the scatter S = Σ_i x_i x_iᵀ."""

    n: np.ndarray
    f: np.ndarray
    N: int
    scatter: np.ndarray


class Posterior(NamedTuple):
    """Posterior means of the speaker means μ + y_s (x space) and variances of y_s in the T basis."""

    means: np.ndarray
    variances: np.ndarray


def diagonalise(between_cov: np.ndarray, within_cov: np.ndarray) -> Basis:
    """Σ_b v = ψ Σ_w v with vᵀ Σ_w v = 1: T = Vᵀ gives T Σ_w Tᵀ = I, T Σ_b Tᵀ = diag(ψ).

    Solved as the generalised symmetric eigenproblem is (LAPACK sygv): Σ_w = L Lᵀ, the ordinary
    eigenproblem of L⁻¹ Σ_b L⁻ᵀ = U diag(ψ) Uᵀ, and V = L⁻ᵀ U.
    """
    try:
        lower = np.linalg.cholesky(_sym(within_cov))
        lower_inv = np.linalg.solve(lower, np.eye(len(lower)))
        psi, u = np.linalg.eigh(_sym(lower_inv @ _sym(between_cov) @ lower_inv.T))
        vectors = lower_inv.T @ u
    except np.linalg.LinAlgError as e:
        raise ValueError(f"plda: the within-speaker covariance is not positive definite ({e})") from None
    return Basis(vectors.T, _sym(within_cov) @ vectors, np.maximum(psi, 0.0))


def e_step(stats: Stats, mean: np.ndarray, basis: Basis) -> Posterior:
    """y_s | X_s ~ N(L_s⁻¹ W Σ_i (x_si - μ), L_s⁻¹), L_s = B + n_s W; in the T basis: n ψ/(1 + n ψ) ū_s, ψ/(1 + n ψ)."""
    n = stats.n[:, None].astype(np.float64)
    u_mean = (stats.f / n - mean) @ basis.T.T
    shrink = n * basis.psi / (1.0 + n * basis.psi)
    return Posterior(mean + (shrink * u_mean) @ basis.T_inv.T, basis.psi / (1.0 + n * basis.psi))


def posterior_covariance_sum(weights: np.ndarray, post: Posterior, basis: Basis) -> np.ndarray:
    """Σ_s w_s L_s⁻¹ = T⁻¹ diag(Σ_s w_s ψ/(1 + n_s ψ)) T⁻ᵀ."""
    return (basis.T_inv * (weights @ post.variances)) @ basis.T_inv.T


def update_mean(post: Posterior) -> np.ndarray:
    """μ = (1/S) Σ_s E[μ + y_s]."""
    return post.means.mean(axis=0)


def update_between(post: Posterior, basis: Basis, mean: np.ndarray) -> np.ndarray:
    """Σ_b = B⁻¹ = (1/S) Σ_s (E[ȳ_s] E[ȳ_s]ᵀ + L_s⁻¹) - μ μᵀ, with ȳ_s = μ_old + y_s."""
    S = len(post.means)
    second = post.means.T @ post.means + posterior_covariance_sum(np.ones(S), post, basis)
    return _sym(second / S - np.outer(mean, mean))


def update_within(stats: Stats, post: Posterior, basis: Basis) -> np.ndarray:
    """Σ_w = W⁻¹ = (1/N) [S - Σ_s (E[ȳ_s] f_sᵀ + f_s E[ȳ_s]ᵀ) + Σ_s n_s (E[ȳ_s] E[ȳ_s]ᵀ + L_s⁻¹)]."""
    cross = post.means.T @ stats.f
    weighted = (post.means * stats.n[:, None]).T @ post.means
    weighted += posterior_covariance_sum(stats.n.astype(np.float64), post, basis)
    return _sym((stats.scatter - cross - cross.T + weighted) / stats.N)


def log_likelihood(stats: Stats, mean: np.ndarray, basis: Basis) -> float:
    """log p(X) = Σ_s log N(vec X_s; 1 ⊗ μ, I ⊗ Σ_w + 11ᵀ ⊗ Σ_b)  (all speakers' utterances)."""
    n, psi, d = stats.n[:, None].astype(np.float64), basis.psi, len(mean)
    total = stats.f.sum(axis=0)
    centred = stats.scatter - np.outer(mean, total) - np.outer(total, mean) + stats.N * np.outer(mean, mean)
    squares = np.einsum("ij,jk,ik->", basis.T, centred, basis.T)  # Σ_s Σ_i ||T (x_si - μ)||²
    sums = (stats.f - n * mean) @ basis.T.T  # Σ_i T (x_si - μ) per speaker
    log_det_t = float(np.linalg.slogdet(basis.T)[1])  # = -½ log det Σ_w
    return float(-0.5 * stats.N * d * LOG_2PI + stats.N * log_det_t - 0.5 * np.log1p(n * psi).sum()
                 - 0.5 * squares + 0.5 * (psi * sums**2 / (1.0 + n * psi)).sum())


def verification_llr(enroll_mean: np.ndarray, n_enroll, test: np.ndarray, mean: np.ndarray,
                     basis: Basis) -> np.ndarray:
    """log p(x_t | X_e) - log p(x_t) = Σ_k log N(u_t; nψ/(1+nψ) ū_e, 1 + ψ/(1+nψ)) - log N(u_t; 0, 1 + ψ), u = T(x - μ)."""
    counts, which = np.unique(np.broadcast_to(np.asarray(n_enroll, dtype=np.float64), (len(test),)),
                              return_inverse=True)
    psi, n = basis.psi, counts[:, None]
    var_same = 1.0 + psi / (1.0 + n * psi)  # one row per distinct enrolment count
    shrink = n * psi / (1.0 + n * psi)
    log_det = (np.log(var_same) - np.log1p(psi)).sum(axis=1)
    rows = (lambda table: table[0]) if len(counts) == 1 else (lambda table: table[which])
    u_e = (enroll_mean.astype(np.float64) - mean) @ basis.T.T
    u_t = (test.astype(np.float64) - mean) @ basis.T.T
    quadratic = ((u_t - rows(shrink) * u_e) ** 2 / rows(var_same) - u_t**2 / (1.0 + psi)).sum(axis=1)
    return -0.5 * (rows(log_det) + quadratic)


def initial_parameters(stats: Stats) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """μ = (1/N) Σ x; Σ_b = covariance of the speaker means; Σ_w = (1/N) Σ_s Σ_i (x_si - x̄_s)(x_si - x̄_s)ᵀ."""
    speaker_means = stats.f / stats.n[:, None]
    mean = stats.f.sum(axis=0) / stats.N
    between = np.cov(speaker_means, rowvar=False, bias=True).reshape(len(mean), len(mean))
    within = (stats.scatter - (speaker_means * stats.n[:, None]).T @ speaker_means) / stats.N
    return mean, _sym(between), _sym(within)


def fit_em(stats: Stats, iterations: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[float]]:
    """(μ, Σ_b, Σ_w, log-likelihood after the initialisation and after each EM iteration)."""
    mean, between, within = initial_parameters(stats)
    basis = diagonalise(between, within)
    history = [log_likelihood(stats, mean, basis)]
    for _ in range(iterations):
        post = e_step(stats, mean, basis)
        mean = update_mean(post)
        between, within = update_between(post, basis, mean), update_within(stats, post, basis)
        basis = diagonalise(between, within)
        history.append(log_likelihood(stats, mean, basis))
    return mean, between, within, history


def _sym(a: np.ndarray) -> np.ndarray:
    return (a + a.T) / 2


@register_backend("plda")
class PLDA(Backend):
    """Two-covariance PLDA fitted by ``iterations`` EM steps; scores are verification log-likelihood ratios."""

    def __init__(self, iterations: int = 10):
        if not isinstance(iterations, int) or isinstance(iterations, bool) or iterations < 0:
            raise ValueError(f"plda: iterations must be a non-negative integer, got {iterations!r}")
        self.iterations = iterations
        self.history: list[float] = []

    def _fit(self, x, index, n_speakers):
        if n_speakers < 2 or n_speakers == len(x):
            raise ValueError(f"plda needs at least 2 speakers and a speaker with 2 utterances; "
                             f"got {n_speakers} speakers for {len(x)} embeddings")
        n, f = speaker_sums(x, index, n_speakers)
        stats = Stats(n, f, len(x), scatter(x))
        self.mean, self.between_cov, self.within_cov, self.history = fit_em(stats, self.iterations)
        self._set_basis()

    def _set_basis(self) -> None:
        self.basis = diagonalise(self.between_cov, self.within_cov)
        self.output_dim = len(self.mean)

    def _transform(self, x):
        return (x - self.mean.astype(x.dtype)) @ self.basis.T.T.astype(x.dtype)

    def score_pairs(self, a, b):
        return self.score_enrolled(a, 1, b)

    def score_enrolled(self, enroll_mean, n_enroll, test):
        enroll_mean, test = self._pair(enroll_mean, test)
        n_enroll = np.broadcast_to(np.asarray(n_enroll), (len(test),))
        if np.any(n_enroll < 1):
            raise ValueError("n_enroll must be >= 1 for every enrolment model")
        out = np.empty(len(test))
        for start in range(0, len(test), CHUNK_ROWS):  # bounded temporaries for millions of trials
            part = slice(start, start + CHUNK_ROWS)
            out[part] = verification_llr(enroll_mean[part], n_enroll[part], test[part], self.mean, self.basis)
        return out

    def options(self):
        return {"iterations": self.iterations}

    def arrays(self):
        return {"mean": self.mean, "between_cov": self.between_cov, "within_cov": self.within_cov}

    def load_arrays(self, arrays, input_dim):
        self.mean = take_array(arrays, "mean", (input_dim,))
        for key in ("between_cov", "within_cov"):
            value = take_array(arrays, key, (input_dim, input_dim))
            if not np.allclose(value, value.T, rtol=1e-10, atol=1e-12 * np.abs(value).max()):
                raise BackendStateError(f"back-end array {key!r} is not symmetric")
            setattr(self, key, value)
        try:
            self._set_basis()
        except ValueError as e:
            raise BackendStateError(f"back-end array 'within_cov': {e}") from None
        self.input_dim = input_dim
