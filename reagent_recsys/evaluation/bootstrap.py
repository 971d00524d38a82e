"""The result type and the bootstrap behind every interval.

Every estimator is written as a *weighted statistic*: a function of a count matrix ``counts`` (B, N) where
``counts[b, i]`` is how many times unit i (a context, or a whole episode) appears in resample b. The point
estimate is the statistic at ``counts = 1``; a bootstrap resample is a multinomial row of counts. Linear
estimators become one matrix product (``counts @ terms``), so resampling is vectorized.

``relative`` is the estimate divided by the logged policy's value measured on the same data (the baseline):
1.0 means "as good as the logging policy", 1.10 means "10% more reward". Its interval comes from the same
resamples as the estimate's, so it accounts for the noise in both. It is ``None`` when the baseline is 0.

Model-based estimators (DM, DR, FQE, WDR, MAGIC, ...) hold their fitted model fixed in these resamples, so the
interval omits the model's own fitting error. `combine_model_fits` adds it: the model is refit on K
bootstrap resamples of the TRAINING data, the estimator is re-evaluated with each refit, and the M = K + 1
values are combined by Rubin's rules (their mean; total variance = within + (1 + 1/M) between; Student t).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from statistics import NormalDist

import numpy as np
from scipy.stats import t as student_t

from reagent_recsys.schema import DataRuleError

# A weighted statistic: counts (B, N) -> one value per resample (B,).
Statistic = Callable[[np.ndarray], np.ndarray]

# Largest count matrix built at once (B_chunk * N entries, float64): bounds memory for large N.
_MAX_CHUNK_ENTRIES = 1 << 22


class EvaluationDataError(DataRuleError):
    """Evaluation inputs that break a rule; the message names the rule, the column, a count and examples."""


@dataclass(frozen=True)
class BootstrapSpec:
    """How intervals are computed: resamples, coverage, and the seed (same seed, same intervals)."""

    samples: int = 200
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.samples < 20:
            raise ValueError(f"bootstrap samples must be >= 20, got {self.samples}")
        if not 0 < self.confidence < 1:
            raise ValueError(f"bootstrap confidence must be in (0, 1), got {self.confidence}")

    @classmethod
    def from_config(cls, config, seed: int = 0) -> BootstrapSpec:
        """From an ``EvaluationConfig`` (``bootstrap_samples``, ``confidence_level``) and the run's seed."""
        return cls(samples=config.bootstrap_samples, confidence=config.confidence_level, seed=seed)


@dataclass(frozen=True)
class Estimate:
    """One policy-value estimate with its bootstrap interval.

    value, lower, upper: the estimated value of the target policy and its interval.
    relative, relative_lower, relative_upper: value / baseline (1.0 = the logging policy's value) and interval.
    n: number of resampled units (contexts for one-step estimators, episodes for sequential ones).
    baseline: the logged policy's value on the same data (mean reward, or mean discounted episode return).
    model_spread, model_fits: std of the estimate over the model fits and their number (M = main + K refits)
    when `combine_model_fits` made it; None/0 for estimates from one model and the data resamples alone.
    """

    name: str
    value: float
    lower: float
    upper: float
    relative: float | None
    relative_lower: float | None
    relative_upper: float | None
    n: int
    baseline: float
    model_spread: float | None = None
    model_fits: int = 0

    def to_dict(self) -> dict[str, str | int | float | None]:
        """Plain JSON-safe dict (non-finite numbers become None)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out


def bootstrap_counts(n: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """(samples, n) multinomial counts: row b says how often each unit is drawn in resample b."""
    idx = rng.integers(0, n, size=(samples, n))  # (B, N) drawn unit indices
    offsets = (np.arange(samples) * n)[:, None]
    return np.bincount((idx + offsets).ravel(), minlength=samples * n).reshape(samples, n).astype(np.float64)


def iter_bootstrap_counts(n: int, spec: BootstrapSpec) -> list[np.ndarray]:
    """The resamples of `spec` as count-matrix chunks; the same (n, spec) gives the same resamples."""
    rng = np.random.default_rng(spec.seed)
    chunk = max(1, min(spec.samples, _MAX_CHUNK_ENTRIES // max(n, 1)))
    sizes = [chunk] * (spec.samples // chunk) + ([spec.samples % chunk] if spec.samples % chunk else [])
    return [bootstrap_counts(n, size, rng) for size in sizes]


def bootstrap_estimate(
    name: str, statistic: Statistic, baseline: Statistic, n: int, spec: BootstrapSpec
) -> Estimate:
    """Evaluate `statistic` and `baseline` on the full data and on the resamples of `spec` (paired)."""
    if n < 2:
        raise EvaluationDataError(f"{name}: need at least 2 units (contexts or episodes) to bootstrap, got {n}")
    full = np.ones((1, n))
    value = float(statistic(full)[0])
    base = float(baseline(full)[0])
    values, bases = [], []
    for counts in iter_bootstrap_counts(n, spec):
        values.append(statistic(counts))
        bases.append(baseline(counts))
    boot = np.concatenate(values)  # (B,)
    boot_base = np.concatenate(bases)  # (B,)
    lower, upper = _percentile_interval(boot, spec.confidence)
    if base == 0.0:
        relative = rel_lower = rel_upper = None
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            rel_lower, rel_upper = _percentile_interval(boot / boot_base, spec.confidence)
        relative = value / base
    return Estimate(name, value, lower, upper, relative, rel_lower, rel_upper, n, base)


def combine_model_fits(estimate: Estimate, refit_values: Sequence[float], confidence: float) -> Estimate:
    """`estimate` (main model fit; interval from data resamples) combined with the estimator's values under K
    model refits, by Rubin's rules over the M = K + 1 fits.

    Point: the mean of the M values (an ensemble: one fit's seed and sample no longer decide it). Interval: the
    main fit's bootstrap interval moved to that mean; per side, within variance W = (h / z)^2 from its half-width
    h, between variance B = sample variance of the M values, total T = W + (1 + 1/M) B, half-width t_nu sqrt(T)
    with Student's t at nu = (M - 1) (1 + W / ((1 + 1/M) B))^2 degrees of freedom, so a handful of fits widens
    honestly (nu -> M - 1 when the model spread dominates). The relative interval likewise, in baseline units.
    With no finite refit value the estimate is returned unchanged.
    """
    refits = np.asarray(refit_values, dtype=np.float64)
    values = np.r_[estimate.value, refits[np.isfinite(refits)]]
    if len(values) < 2 or not np.isfinite(estimate.value):
        return estimate
    m, center, spread = len(values), float(values.mean()), float(values.std(ddof=1))
    shift = center - estimate.value
    between = (1.0 + 1.0 / m) * spread ** 2
    z = NormalDist().inv_cdf((1.0 + confidence) / 2.0)

    def half_width(half: float) -> float:
        within = (half / z) ** 2
        if between == 0.0:
            return half
        dof = (m - 1) * (1.0 + within / between) ** 2
        return float(student_t.ppf((1.0 + confidence) / 2.0, dof)) * math.sqrt(within + between)

    def combine(old_center: float | None, lower: float | None, upper: float | None, scale: float):
        """(center, lower, upper) moved by shift / scale and widened; scale converts to value units."""
        if old_center is None or lower is None or upper is None:
            return old_center, lower, upper
        new_center, unit = old_center + shift / scale, abs(scale)
        low_half, high_half = max(old_center - lower, 0.0) * unit, max(upper - old_center, 0.0) * unit
        return new_center, new_center - half_width(low_half) / unit, new_center + half_width(high_half) / unit

    value, lower, upper = combine(estimate.value, estimate.lower, estimate.upper, 1.0)
    relative, rel_lower, rel_upper = estimate.relative, estimate.relative_lower, estimate.relative_upper
    if estimate.baseline != 0.0:
        relative, rel_lower, rel_upper = combine(relative, rel_lower, rel_upper, estimate.baseline)
    return replace(estimate, value=value, lower=lower, upper=upper, relative=relative, relative_lower=rel_lower,
                   relative_upper=rel_upper, model_spread=spread, model_fits=m)


def _percentile_interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


# ------------------------------------------------------------------------ weighted statistics builders
def weighted_mean(terms: np.ndarray) -> Statistic:
    """Statistic: the (resample-weighted) mean of per-unit terms (N,)."""
    terms = np.asarray(terms, dtype=np.float64)
    return lambda counts: (counts @ terms) / counts.sum(axis=1)


def weighted_ratio(numerator: np.ndarray, denominator: np.ndarray) -> Statistic:
    """Statistic: sum(numerator) / sum(denominator) over the resample (self-normalized estimators)."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)

    def statistic(counts: np.ndarray) -> np.ndarray:
        den = counts @ denominator
        # nan when the resample has no weight at all (the target never takes a logged action).
        return np.divide(counts @ numerator, den, out=np.full_like(den, np.nan), where=den != 0)

    return statistic


def check_rows(rule: str, column: str, bad: np.ndarray, values: np.ndarray | None = None) -> None:
    """Raise EvaluationDataError naming `rule` and `column` when any entry of the boolean `bad` is set."""
    bad = np.asarray(bad)
    if bad.ndim > 1:
        bad = bad.reshape(bad.shape[0], -1).any(axis=1)
    count = int(bad.sum())
    if count == 0:
        return
    rows = np.flatnonzero(bad)[:5]
    shown = ""
    if values is not None:
        shown = f", values {np.asarray(values)[rows].tolist()}"
    raise EvaluationDataError(f"{rule}: column {column!r} violates it in {count} rows (e.g. rows {rows.tolist()}{shown})")
