"""Trust diagnostics: when an estimate can be believed, in numbers and in words.

* Importance weights (IPS, SNIPS per context; PDIS, WPDIS, DR, WDR, MAGIC per episode, the product over its
  steps): effective sample size ESS = (sum w)^2 / sum w^2, also as a fraction of the units, and the largest
  weight's share of the total. A greedy policy over A uniformly logged actions keeps a T-step episode with
  probability A^-T: its weights collapse onto a handful of episodes (ESS ~ 1), and PDIS/WPDIS then say little.
* Support: the share of eval rows where the target puts mass on an action the logger never took in this split
  where it was possible (no logged evidence at all; the models extrapolate there).
* Models: the held-out error of the reward model (its prediction of the logged reward on the eval split) and of
  FQE (the 1-step Bellman residual Q(s, a) - r - gamma V(s') on eval transitions), as RMSE and as R^2.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

# Thresholds of the verdicts (fractions of the units / of the target's variance).
ESS_UNTRUSTED = 0.01  # below 1% of the units (or under MIN_ESS units): the weights have collapsed
ESS_CAUTION = 0.10
MIN_ESS = 30.0
SUPPORT_CAUTION = 0.05  # 5% of rows put mass on never-logged actions
R2_UNTRUSTED = 0.0  # the model explains nothing of its held-out target
R2_CAUTION = 0.5

IMPORTANCE = {"IPS", "SNIPS", "PDIS", "WPDIS"}
MODEL_ONLY = {"DM", "FQE"}
HYBRID = {"DR", "Switch-DR", "WDR", "MAGIC"}


@dataclass(frozen=True)
class WeightStats:
    """Importance weights over units (contexts or episodes)."""

    units: int
    ess: float
    ess_fraction: float
    max_weight: float
    max_weight_share: float  # the largest weight / the sum of weights
    zero_weight_share: float  # units whose weight is 0 (the target never takes the logged action(s))

    @classmethod
    def of(cls, weights: np.ndarray) -> WeightStats:
        w = np.asarray(weights, dtype=np.float64)
        total, squares = float(w.sum()), float((w ** 2).sum())
        ess = total ** 2 / squares if squares > 0 else 0.0
        return cls(len(w), ess, ess / max(len(w), 1), float(w.max(initial=0.0)),
                   float(w.max(initial=0.0) / total) if total > 0 else math.nan, float((w == 0).mean()))


@dataclass(frozen=True)
class ModelError:
    """A model's held-out error: RMSE against its target and R^2 = 1 - MSE / Var(target)."""

    metric: str
    rmse: float
    r2: float
    rows: int

    @classmethod
    def of(cls, metric: str, prediction: np.ndarray, target: np.ndarray) -> ModelError:
        prediction, target = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
        mse = float(np.mean((prediction - target) ** 2))
        var = float(np.var(target))
        return cls(metric, math.sqrt(mse), 1.0 - mse / var if var > 0 else math.nan, len(target))


def unsupported_share(target: np.ndarray, action: np.ndarray, possible: np.ndarray) -> float:
    """Share of rows where `target` (N, A) puts mass on an action never logged in these rows where possible."""
    logged = np.bincount(action, minlength=target.shape[1]) > 0  # (A,)
    unsupported = (np.asarray(target) > 0) & ~logged[None, :] & np.asarray(possible, bool)
    return float(unsupported.any(axis=1).mean())


@dataclass(frozen=True)
class Trust:
    """Whether to believe one estimator's value: level "ok", "caution" or "untrusted" and why (words)."""

    level: str
    why: str
    weights: WeightStats | None = None
    model: ModelError | None = None
    unsupported_share: float | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        return _finite(out)


def _finite(value):
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _weights_words(w: WeightStats, unit: str) -> tuple[str, str]:
    if not w.max_weight > 0:
        return "untrusted", f"importance weights: all 0 (no logged {unit[:-1]} follows the policy), ESS 0 of {w.units}"
    text = (f"importance weights: ESS {w.ess:.1f} of {w.units} {unit} ({100 * w.ess_fraction:.2g}%), the largest "
            f"weight carries {100 * w.max_weight_share:.0f}% of the total")
    if w.ess < MIN_ESS or w.ess_fraction < ESS_UNTRUSTED:
        return "untrusted", text
    return ("caution" if w.ess_fraction < ESS_CAUTION else "ok"), text


def _model_words(m: ModelError) -> tuple[str, str]:
    text = f"model held-out {m.metric}: RMSE {m.rmse:.3g}, R^2 {m.r2:.2f}"
    if not math.isfinite(m.r2) or m.r2 < R2_UNTRUSTED:
        return "untrusted", text
    return ("caution" if m.r2 < R2_CAUTION else "ok"), text


_ORDER = {"ok": 0, "caution": 1, "untrusted": 2}


def judge(name: str, weights: WeightStats, unit: str, model: ModelError | None, support: float) -> Trust:
    """The verdict for estimator `name` from its weights, its model's error and the support share."""
    level, words = "ok", []
    support_level = "caution" if support > SUPPORT_CAUTION else "ok"
    support_words = f"{100 * support:.1f}% of rows put mass on never-logged actions"
    if name in IMPORTANCE:
        level, text = _weights_words(weights, unit)
        words.append(text)
        if support > 0:
            level, words = max(level, "caution", key=_ORDER.get), [*words, support_words + " (IS cannot see them)"]
    elif model is not None:
        level, text = _model_words(model)
        words.append(text)
        if support_level != "ok":
            level, words = max(level, support_level, key=_ORDER.get), [*words, support_words + " (extrapolated)"]
        if name in HYBRID:
            w_level, w_text = _weights_words(weights, unit)
            if w_level == "untrusted":
                words.append(w_text.replace("importance weights", "correction weights") +
                             ": the value is essentially the model's")
    if level == "untrusted" and name in IMPORTANCE:
        words.insert(0, "do not trust: the importance weights have collapsed")
    elif level == "untrusted":
        words.insert(0, "do not trust: the model does not predict held-out data")
    return Trust(level, "; ".join(words), weights, model, support)
