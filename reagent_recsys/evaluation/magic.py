"""MAGIC (Thomas & Brunskill 2016): a bias/variance-weighted blend of off-policy j-step returns.

The off-policy j-step return g^(j) uses weighted importance sampling for the first j+1 steps and the model
after them (self-normalized weights wn_t = w_t / sum_i w_t^i):

    g^(j) = sum_i [ sum_{t<=j} gamma^t wn_t r_t + gamma^(j+1) wn_j v_{j+1} - sum_{t<=j} gamma^t (wn_t q_t - wn_{t-1} v_t) ]

g^(-1) is the pure model (mean v_0) and g^(T-1) is WDR. With Omega the covariance of the g^(j) (from
per-episode terms) and b_j the distance from g^(j) to a bootstrap confidence interval of WDR (its bias bound),
the blend weights x minimize x^T (Omega + b b^T) x on the simplex; MAGIC = x . g, so it always lies within the
range of its components.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reagent_recsys.evaluation.bootstrap import BootstrapSpec, Estimate, bootstrap_counts
from reagent_recsys.evaluation.sequential import EpisodeData, episode_estimate, wdr_statistic

BIAS_BOOTSTRAP_SAMPLES = 50  # resamples behind WDR's confidence interval (the bias bound)
BIAS_CONFIDENCE = 0.9


@dataclass(frozen=True)
class MagicBlend:
    """The components MAGIC blends and how."""

    j_steps: np.ndarray  # (J,) -1 (pure model) ... T-1 (WDR)
    returns: np.ndarray  # (J,) g^(j)
    bias: np.ndarray  # (J,) b_j
    weights: np.ndarray  # (J,) x, on the simplex
    value: float  # x . g


def magic_j_steps(horizon: int, num_j_steps: int) -> np.ndarray:
    """j in {-1, ..., horizon-1}: all of them when they fit in num_j_steps, else evenly spaced incl. both ends."""
    if horizon + 1 <= num_j_steps:
        return np.arange(-1, horizon)
    return np.unique(np.round(np.linspace(-1, horizon - 1, num_j_steps)).astype(np.int64))


def _safe_normalize(weight: np.ndarray) -> np.ndarray:
    total = weight.sum(axis=0)  # (T,)
    return np.divide(weight, total, out=np.zeros_like(weight), where=total != 0)


def j_step_terms(w, w_prev, r, q, v, discount) -> np.ndarray:
    """(E, T+1) per-episode contributions to g^(j) for j = -1..T-1 (column j+1); g^(j) is the column sum."""
    wn, wn_prev = _safe_normalize(w), _safe_normalize(w_prev)  # (E, T)
    step = discount * (wn * r - wn * q + wn_prev * v)  # (E, T)
    tail = discount * wn_prev * v  # (E, T): column k is gamma^k wn_{k-1} v_k, the model's tail for j = k-1
    zeros = np.zeros((len(w), 1))
    return np.hstack([zeros, np.cumsum(step, axis=1)]) + np.hstack([tail, zeros])


def min_quadratic_on_simplex(matrices: np.ndarray, iterations: int = 1000, tolerance: float = 1e-9) -> np.ndarray:
    """(B, k, k) symmetric PSD M_b -> (B, k) argmin_x x^T M_b x on the simplex {x >= 0, sum x = 1}.

    Accelerated projected gradient (FISTA), batched over b; stops when no coordinate moves more than tolerance.
    """
    batch, k, _ = matrices.shape
    lipschitz = 2.0 * np.linalg.eigvalsh(matrices)[:, -1]  # (B,)
    lipschitz = np.where(np.isfinite(lipschitz) & (lipschitz > 0), lipschitz, 1.0)
    step = 2.0 * matrices / lipschitz[:, None, None]  # (B, k, k): the gradient step is y - step @ y
    x = np.full((batch, k), 1.0 / k)
    y, momentum = x.copy(), 1.0
    for _ in range(iterations):
        x_next = _project_to_simplex(y - np.einsum("bij,bj->bi", step, y))
        if np.abs(x_next - x).max() < tolerance:
            return x_next
        momentum_next = (1.0 + np.sqrt(1.0 + 4.0 * momentum**2)) / 2.0
        y = x_next + ((momentum - 1.0) / momentum_next) * (x_next - x)
        x, momentum = x_next, momentum_next
    return x


def _project_to_simplex(v: np.ndarray) -> np.ndarray:
    """Row-wise Euclidean projection of (B, k) onto the simplex (sort-based, Duchi et al. 2008)."""
    u = -np.sort(-v, axis=1)  # descending
    cssv = np.cumsum(u, axis=1) - 1.0
    ks = np.arange(1, v.shape[1] + 1)
    positive = u - cssv / ks > 0  # (B, k): True on a prefix
    last = positive.shape[1] - 1 - np.argmax(positive[:, ::-1], axis=1)  # (B,) last True
    theta = cssv[np.arange(len(v)), last] / (last + 1.0)
    return np.maximum(v - theta[:, None], 0.0)


def _blend_problem(w, w_prev, r, q, v, discount, j_steps: np.ndarray, rng: np.random.Generator):
    """(g (J,), Omega + b b^T (J, J), b (J,)) on one sample of episodes."""
    n = len(w)
    terms = j_step_terms(w, w_prev, r, q, v, discount)[:, j_steps + 1]  # (E, J)
    returns = terms.sum(axis=0)  # (J,)
    omega = n * np.atleast_2d(np.cov(terms, rowvar=False, ddof=1))  # (J, J)
    wdr_draws = wdr_statistic(w, w_prev, r, q, v, discount)(bootstrap_counts(n, BIAS_BOOTSTRAP_SAMPLES, rng))
    alpha = (1.0 - BIAS_CONFIDENCE) / 2.0
    low, high = np.quantile(wdr_draws, [alpha, 1.0 - alpha])
    bias = np.maximum(low - returns, 0.0) + np.maximum(returns - high, 0.0)  # distance to [low, high]
    return returns, omega + np.outer(bias, bias), bias


def magic_blend(data: EpisodeData, num_j_steps: int = 10, seed: int = 0) -> MagicBlend:
    """MAGIC's components, bias bounds and blend weights on the full data."""
    q, v = data.model_terms()
    j_steps = magic_j_steps(data.mask.shape[1], num_j_steps)
    rng = np.random.default_rng([seed, 1])  # the same inner resamples as magic()'s point estimate
    returns, matrix, bias = _blend_problem(data.w, data.w_prev, data.r, q, v, data.discount, j_steps, rng)
    weights = min_quadratic_on_simplex(matrix[None])[0]
    return MagicBlend(j_steps, returns, bias, weights, float(weights @ returns))


def magic(data: EpisodeData, spec: BootstrapSpec, num_j_steps: int = 10) -> Estimate:
    """MAGIC with an episode-bootstrap interval (the blend is recomputed on every resample)."""
    q, v = data.model_terms()
    j_steps = magic_j_steps(data.mask.shape[1], num_j_steps)
    arrays = (data.w, data.w_prev, data.r, q, v)
    rng = np.random.default_rng([spec.seed, 1])  # the inner bias-bound resamples; deterministic per spec
    episodes = np.arange(data.num_episodes)

    def statistic(counts: np.ndarray) -> np.ndarray:
        returns, matrices = [], []
        for row in counts:  # the blend is not linear in the counts: materialize each resample
            idx = np.repeat(episodes, row.astype(np.int64))
            g, matrix, _ = _blend_problem(*(a[idx] for a in arrays), data.discount, j_steps, rng)
            returns.append(g)
            matrices.append(matrix)
        weights = min_quadratic_on_simplex(np.stack(matrices))  # (B, J), solved together
        return (weights * np.stack(returns)).sum(axis=1)

    return episode_estimate("MAGIC", statistic, data, spec)
