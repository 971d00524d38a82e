"""Sequential (episodic) counterfactual estimators: PDIS, WPDIS, DR, WDR and MAGIC.

Notation (Jiang & Li 2016; Thomas & Brunskill 2016): episode i has steps t = 0..T_i-1 (ordinal position, not
the raw sequence_number), per-step ratio rho_t = pi(a_t|s_t) / mu(a_t|s_t), cumulative weight
w_t = prod_{k<=t} rho_k (w_{-1} = 1), discount gamma^t, model estimates q_t = Q(s_t, a_t) and
v_t = sum_a pi(a|s_t) Q(s_t, a). Episodes are padded to T steps; past its end an episode is absorbed: reward,
q and v are 0 and the weight stays constant (ratio 1), so shorter episodes keep counting in the normalizers.

Intervals resample whole episodes. The baseline is the mean discounted return of the logged episodes. For the
model-based estimators (FQE's value, DR, WDR, MAGIC) that interval holds the model fixed; evaluation.cpe adds
FQE refits on bootstrap resamples of the training episodes and combines the fits (`bootstrap.combine_model_fits`:
their mean, total variance = within + (1 + 1/M) between).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from reagent_recsys.evaluation.bootstrap import (
    BootstrapSpec,
    Estimate,
    EvaluationDataError,
    Statistic,
    bootstrap_estimate,
    weighted_mean,
)
from reagent_recsys.evaluation.one_step import validate_policy_inputs


def pad_episodes(
    episode_key: np.ndarray, sequence_number: np.ndarray, arrays: Mapping[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Flat per-step arrays (N, ...) -> padded (E, T, ...) arrays, the step mask (E, T) and the keys (E,).

    Rows are ordered by (episode_key, sequence_number) first (a no-op when they already are); duplicate
    (key, sequence_number) pairs are an error. Padded entries are 0.
    """
    key = np.asarray(episode_key)
    seq = np.asarray(sequence_number)
    n = len(key)
    if n == 0 or seq.shape != (n,) or key.ndim != 1:
        raise EvaluationDataError(f"episode_key and sequence_number must be equal-length non-empty 1-d arrays, "
                                  f"got shapes {key.shape} and {seq.shape}")
    order = np.lexsort((seq, key))  # (N,)
    key, seq = key[order], seq[order]
    dup = (key[1:] == key[:-1]) & (seq[1:] == seq[:-1])
    if dup.any():
        rows = np.flatnonzero(dup)[:5]
        raise EvaluationDataError(f"unique (episode_key, sequence_number): {int(dup.sum())} duplicate steps, "
                                  f"e.g. keys {key[rows].tolist()} at sequence_number {seq[rows].tolist()}")
    new_episode = np.r_[True, key[1:] != key[:-1]]  # (N,)
    episode = np.cumsum(new_episode) - 1  # (N,) episode index of each step
    starts = np.flatnonzero(new_episode)  # (E,)
    position = np.arange(n) - starts[episode]  # (N,) ordinal step within its episode
    num_episodes, horizon = len(starts), int(position.max()) + 1
    mask = np.zeros((num_episodes, horizon), dtype=bool)
    mask[episode, position] = True
    padded = {}
    for name, values in arrays.items():
        values = np.asarray(values)
        if values.shape[:1] != (n,):
            raise EvaluationDataError(f"{name} must have {n} rows like episode_key, got shape {values.shape}")
        out = np.zeros((num_episodes, horizon, *values.shape[1:]), dtype=values.dtype)
        out[episode, position] = values[order]
        padded[name] = out
    return padded, mask, key[starts]


@dataclass
class EpisodeData:
    """Logged episodes, padded to a common length, with the target policy's view (validated on construction)."""

    reward: np.ndarray  # (E, T)
    mask: np.ndarray  # (E, T) True on real steps; each row a prefix of True
    logged_action: np.ndarray  # (E, T) int
    logged_propensity: np.ndarray  # (E, T) mu(a_t | s_t)
    target_probs: np.ndarray  # (E, T, A) pi(. | s_t)
    gamma: float
    q_estimates: np.ndarray | None = None  # (E, T, A) Q(s_t, .) from a model (e.g. FQE); for DR, WDR, MAGIC
    possible_action_mask: np.ndarray | None = None  # (E, T, A)
    # Derived (E, T) arrays: ratios carried past the episode end, model terms zeroed there.
    w: np.ndarray = field(init=False, repr=False)  # cumulative importance weight w_t
    w_prev: np.ndarray = field(init=False, repr=False)  # w_{t-1}, with w_{-1} = 1
    r: np.ndarray = field(init=False, repr=False)
    q: np.ndarray | None = field(init=False, repr=False)  # Q(s_t, a_t)
    v: np.ndarray | None = field(init=False, repr=False)  # sum_a pi(a|s_t) Q(s_t, a)
    discount: np.ndarray = field(init=False, repr=False)  # (T,) gamma^t
    pi: np.ndarray = field(init=False, repr=False)  # (E, T, A) target probs restricted to possible actions

    def __post_init__(self) -> None:
        if not 0 <= self.gamma <= 1:
            raise EvaluationDataError(f"gamma must be in [0, 1], got {self.gamma}")
        mask = np.asarray(self.mask).astype(bool)
        if mask.ndim != 2:
            raise EvaluationDataError(f"mask must be (E, T), got shape {mask.shape}")
        num_actions = np.shape(self.target_probs)[-1]
        shapes = {"reward": mask.shape, "logged_action": mask.shape, "logged_propensity": mask.shape,
                  "target_probs": (*mask.shape, num_actions)}
        shapes.update({name: (*mask.shape, num_actions) for name in ("q_estimates", "possible_action_mask")
                       if getattr(self, name) is not None})
        for name, shape in shapes.items():
            if np.shape(getattr(self, name)) != shape:
                raise EvaluationDataError(f"{name} must have shape {shape} (from mask), got {np.shape(getattr(self, name))}")
        starts_late = mask[:, 1:] & ~mask[:, :-1]
        if (~mask[:, 0]).any() or starts_late.any():
            bad = np.flatnonzero(~mask[:, 0] | starts_late.any(axis=1))
            raise EvaluationDataError(f"mask rows must be a non-empty prefix of True: {len(bad)} episodes are not, "
                                      f"e.g. episodes {bad[:5].tolist()}")
        self.mask = mask
        # Neutral values on padded steps so validation and ratios ignore them.
        self.logged_action = np.where(mask, np.asarray(self.logged_action), 0).astype(np.int64)
        self.logged_propensity = np.where(mask, np.asarray(self.logged_propensity, dtype=np.float64), 1.0)
        self.reward = np.where(mask, np.asarray(self.reward, dtype=np.float64), 0.0)
        one_hot = np.eye(num_actions)[self.logged_action]  # (E, T, A)
        self.target_probs = np.where(mask[..., None], np.asarray(self.target_probs, dtype=np.float64), one_hot)
        possible = (np.ones_like(one_hot, dtype=bool) if self.possible_action_mask is None
                    else np.asarray(self.possible_action_mask).astype(bool) | ~mask[..., None])
        self.possible_action_mask = possible
        if self.q_estimates is not None:
            self.q_estimates = np.where(mask[..., None], np.asarray(self.q_estimates, dtype=np.float64), 0.0)
        self.pi = pi = validate_policy_inputs(self.logged_action, self.logged_propensity, self.reward,
                                              self.target_probs, possible, self.q_estimates)  # (E, T, A)
        pi_logged = np.take_along_axis(pi, self.logged_action[..., None], axis=2)[..., 0]  # (E, T)
        self.w = np.cumprod(np.where(mask, pi_logged / self.logged_propensity, 1.0), axis=1)
        self.w_prev = np.concatenate([np.ones((len(mask), 1)), self.w[:, :-1]], axis=1)
        self.r = self.reward
        self.discount = self.gamma ** np.arange(mask.shape[1], dtype=np.float64)
        self.q = self.v = None
        if self.q_estimates is not None:
            self.q = np.take_along_axis(self.q_estimates, self.logged_action[..., None], axis=2)[..., 0]
            self.v = np.where(mask, (pi * self.q_estimates).sum(axis=2), 0.0)
            self.q = np.where(mask, self.q, 0.0)

    @classmethod
    def from_flat(
        cls,
        episode_key: np.ndarray,  # (N,)
        sequence_number: np.ndarray,  # (N,)
        logged_action: np.ndarray,  # (N,)
        logged_propensity: np.ndarray,  # (N,)
        reward: np.ndarray,  # (N,)
        target_probs: np.ndarray,  # (N, A)
        gamma: float,
        q_estimates: np.ndarray | None = None,  # (N, A)
        possible_action_mask: np.ndarray | None = None,  # (N, A)
    ) -> EpisodeData:
        """From flat per-step arrays (e.g. columns of the training table's eval split)."""
        arrays = {"logged_action": logged_action, "logged_propensity": logged_propensity, "reward": reward,
                  "target_probs": target_probs}
        optional = {"q_estimates": q_estimates, "possible_action_mask": possible_action_mask}
        arrays.update({k: v for k, v in optional.items() if v is not None})
        padded, mask, _ = pad_episodes(episode_key, sequence_number, arrays)
        return cls(mask=mask, gamma=gamma, **padded)

    @property
    def num_episodes(self) -> int:
        return self.mask.shape[0]

    def logged_returns(self) -> np.ndarray:
        """(E,) discounted return of each logged episode, sum_t gamma^t r_t."""
        return self.r @ self.discount

    def model_terms(self) -> tuple[np.ndarray, np.ndarray]:
        if self.q is None or self.v is None:
            raise EvaluationDataError("this estimator needs q_estimates (E, T, A) from a model, e.g. FQE")
        return self.q, self.v


# ------------------------------------------------------------------------- weighted statistics
def _normalized_sum(counts: np.ndarray, numerator: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(B, T): sum_i c_i numerator_it / sum_i c_i weight_it, 0 where no episode has weight at t."""
    den = counts @ weight
    return np.divide(counts @ numerator, den, out=np.zeros_like(den), where=den != 0)


def wdr_statistic(w, w_prev, r, q, v, discount) -> Statistic:
    """WDR as a weighted statistic over episodes (shared by weighted_doubly_robust and MAGIC's bias bound).

    Arrays are EpisodeData's derived (E, T) w, w_prev, r, q, v and the (T,) discount.
    """
    horizon = w.shape[1]
    stacked = np.hstack([w * r - w * q, w, w_prev * v, w_prev])  # (E, 4T): one matrix product per resample

    def statistic(counts: np.ndarray) -> np.ndarray:
        sums = (counts @ stacked).reshape(len(counts), 4, horizon)  # (B, 4, T)
        is_part = np.divide(sums[:, 0], sums[:, 1], out=np.zeros_like(sums[:, 0]), where=sums[:, 1] != 0)
        model_part = np.divide(sums[:, 2], sums[:, 3], out=np.zeros_like(sums[:, 2]), where=sums[:, 3] != 0)
        return (is_part + model_part) @ discount  # (B,)

    return statistic


def episode_estimate(name: str, statistic: Statistic, data: EpisodeData, spec: BootstrapSpec) -> Estimate:
    """Bootstrap `statistic` over whole episodes against the logged policy's mean discounted return."""
    return bootstrap_estimate(name, statistic, weighted_mean(data.logged_returns()), data.num_episodes, spec)


# --------------------------------------------------------------------------------------- estimators
def per_decision_importance_sampling(data: EpisodeData, spec: BootstrapSpec) -> Estimate:
    """PDIS (Precup 2000): V = 1/n sum_i sum_t gamma^t w_t^i r_t^i."""
    return episode_estimate("PDIS", weighted_mean((data.w * data.r) @ data.discount), data, spec)


def weighted_per_decision_importance_sampling(data: EpisodeData, spec: BootstrapSpec) -> Estimate:
    """WPDIS: V = sum_t gamma^t sum_i w_t^i r_t^i / sum_i w_t^i."""

    def statistic(counts: np.ndarray) -> np.ndarray:
        return _normalized_sum(counts, data.w * data.r, data.w) @ data.discount

    return episode_estimate("WPDIS", statistic, data, spec)


def doubly_robust_terms(data: EpisodeData) -> np.ndarray:
    """(E,) per-episode DR: sum_t gamma^t [w_t r_t - (w_t q_t - w_{t-1} v_t)], Jiang & Li's recursion unrolled."""
    q, v = data.model_terms()
    return (data.w * data.r - data.w * q + data.w_prev * v) @ data.discount


def sequential_direct_method(data: EpisodeData, spec: BootstrapSpec, name: str = "DM") -> Estimate:
    """DM: the model's value of the initial states, V = 1/n sum_i v_0^i (with FQE's Q: the FQE estimate).

    The interval resamples episodes with the model held fixed: it omits the model's own fitting error. The
    CPE pipeline (evaluation.cpe) adds it for every model-based estimator (this one, DR, WDR, MAGIC) with
    `bootstrap.combine_model_fits`: the model is refit on bootstrap resamples of the training episodes.
    """
    _, v = data.model_terms()
    return episode_estimate(name, weighted_mean(v[:, 0]), data, spec)


def sequential_doubly_robust(data: EpisodeData, spec: BootstrapSpec) -> Estimate:
    """DR (Jiang & Li 2016): V = 1/n sum_i doubly_robust_terms_i."""
    return episode_estimate("DR", weighted_mean(doubly_robust_terms(data)), data, spec)


def weighted_doubly_robust(data: EpisodeData, spec: BootstrapSpec) -> Estimate:
    """WDR (Thomas & Brunskill 2016): DR with w_t replaced by w_t / sum_i w_t^i."""
    q, v = data.model_terms()
    return episode_estimate("WDR", wdr_statistic(data.w, data.w_prev, data.r, q, v, data.discount), data, spec)
