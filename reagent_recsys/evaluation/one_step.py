"""One-step (contextual bandit) counterfactual estimators: DM, IPS, SNIPS, DR and Switch-DR.

Notation (Dudik, Langford & Li 2011; Wang, Agarwal & Dudik 2017): context x_i, logged action a_i drawn by the
logging policy mu with propensity mu_i = mu(a_i | x_i), reward r_i, target policy pi(a | x), reward model
q(x, a), importance weight rho_i = pi(a_i | x_i) / mu_i. Every estimator is a mean over contexts (SNIPS a ratio
of sums), so its interval resamples contexts. The baseline is the mean logged reward.

The target probabilities are restricted to the possible actions and renormalized, as a server that masks
impossible actions would do; a row with no target mass on any possible action is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from reagent_recsys.evaluation.bootstrap import (
    BootstrapSpec,
    Estimate,
    EvaluationDataError,
    Statistic,
    bootstrap_estimate,
    check_rows,
    weighted_mean,
    weighted_ratio,
)

_PROB_TOLERANCE = 1e-4


@dataclass
class BanditData:
    """Logged one-step decisions and the target policy's view of them (validated on construction)."""

    logged_action: np.ndarray  # (N,) int index of the logged action
    logged_propensity: np.ndarray  # (N,) mu(a_i | x_i) in (0, 1]
    reward: np.ndarray  # (N,)
    target_probs: np.ndarray  # (N, A) pi(a | x_i); one-hot for a greedy policy
    reward_predictions: np.ndarray | None = None  # (N, A) q(x_i, a); needed by DM, DR, Switch-DR
    possible_action_mask: np.ndarray | None = None  # (N, A) 1 where the action was possible; None: all
    pi: np.ndarray = field(init=False, repr=False)  # (N, A) target probs restricted to possible actions

    def __post_init__(self) -> None:
        self.logged_action = np.asarray(self.logged_action)
        self.logged_propensity = np.asarray(self.logged_propensity, dtype=np.float64)
        self.reward = np.asarray(self.reward, dtype=np.float64)
        self.target_probs = np.asarray(self.target_probs, dtype=np.float64)
        n, num_actions = _check_shapes(self)
        if self.possible_action_mask is None:
            self.possible_action_mask = np.ones((n, num_actions), dtype=bool)
        self.possible_action_mask = np.asarray(self.possible_action_mask).astype(bool)
        if self.reward_predictions is not None:
            self.reward_predictions = np.asarray(self.reward_predictions, dtype=np.float64)
        self.pi = validate_policy_inputs(
            self.logged_action, self.logged_propensity, self.reward, self.target_probs,
            self.possible_action_mask, self.reward_predictions,
        )

    @property
    def n(self) -> int:
        return len(self.reward)

    @property
    def num_actions(self) -> int:
        return self.target_probs.shape[1]

    def importance_weight(self) -> np.ndarray:
        """rho_i = pi(a_i | x_i) / mu(a_i | x_i), shape (N,)."""
        pi_logged = np.take_along_axis(self.pi, self.logged_action[:, None], axis=1)[:, 0]
        return pi_logged / self.logged_propensity

    def model(self) -> np.ndarray:
        if self.reward_predictions is None:
            raise EvaluationDataError("this estimator needs reward_predictions (N, A) from a reward model")
        return self.reward_predictions


def _check_shapes(data: BanditData) -> tuple[int, int]:
    if data.target_probs.ndim != 2:
        raise EvaluationDataError(f"target_probs must be (N, A), got shape {data.target_probs.shape}")
    n, num_actions = data.target_probs.shape
    for name in ("logged_action", "logged_propensity", "reward"):
        if getattr(data, name).shape != (n,):
            raise EvaluationDataError(f"{name} must have shape ({n},) like target_probs, got {getattr(data, name).shape}")
    for name in ("reward_predictions", "possible_action_mask"):
        value = getattr(data, name)
        if value is not None and np.shape(value) != (n, num_actions):
            raise EvaluationDataError(f"{name} must have shape ({n}, {num_actions}), got {np.shape(value)}")
    if not np.issubdtype(data.logged_action.dtype, np.integer):
        raise EvaluationDataError(f"logged_action must hold integer action indices, got dtype {data.logged_action.dtype}")
    return n, num_actions


def validate_policy_inputs(
    logged_action: np.ndarray,  # (..., ) int
    logged_propensity: np.ndarray,  # (...,)
    reward: np.ndarray,  # (...,)
    target_probs: np.ndarray,  # (..., A)
    possible_action_mask: np.ndarray,  # (..., A) bool
    q_predictions: np.ndarray | None = None,  # (..., A)
) -> np.ndarray:
    """Check the rules every estimator relies on; return the target probs restricted to possible actions."""
    num_actions = target_probs.shape[-1]
    flat_action = logged_action.reshape(-1)
    check_rows("logged action index in [0, A)", "logged_action",
               (flat_action < 0) | (flat_action >= num_actions), flat_action)
    flat_prop = logged_propensity.reshape(-1)
    check_rows("propensity in (0, 1]", "logged_propensity",
               ~((flat_prop > 0) & (flat_prop <= 1 + _PROB_TOLERANCE)), flat_prop)
    check_rows("finite reward", "reward", ~np.isfinite(reward.reshape(-1)), reward.reshape(-1))
    probs = target_probs.reshape(-1, num_actions)
    mask = possible_action_mask.reshape(-1, num_actions)
    check_rows("probabilities are finite and >= 0", "target_probs", ~np.isfinite(probs) | (probs < 0))
    sums = probs.sum(axis=1)
    check_rows("probabilities sum to 1", "target_probs", np.abs(sums - 1) > _PROB_TOLERANCE, sums)
    logged_possible = np.take_along_axis(mask, flat_action[:, None], axis=1)[:, 0]
    check_rows("logged action is a possible action", "possible_action_mask", ~logged_possible, flat_action)
    masked = np.where(mask, probs, 0.0)
    mass = masked.sum(axis=1)
    check_rows("target policy puts mass on a possible action", "target_probs", mass <= 0, mass)
    if q_predictions is not None:
        check_rows("finite predictions", "reward/Q predictions",
                   ~np.isfinite(q_predictions.reshape(-1, num_actions)))
    return (masked / mass[:, None]).reshape(target_probs.shape)


def self_normalized_weights(rho: np.ndarray) -> np.ndarray:
    """rho_i / sum_j rho_j: the weights SNIPS (and the weighted sequential estimators) average with."""
    total = rho.sum()
    if total <= 0:
        raise EvaluationDataError("self-normalized weights: all importance weights are 0 (no overlap)")
    return rho / total


# -------------------------------------------------------------------------------- per-context terms
def dm_terms(data: BanditData) -> np.ndarray:
    """DM: sum_a pi(a | x_i) q(x_i, a), shape (N,)."""
    return (data.pi * data.model()).sum(axis=1)


def dr_terms(data: BanditData) -> np.ndarray:
    """DR: DM_i + rho_i (r_i - q(x_i, a_i)), shape (N,)."""
    q_logged = np.take_along_axis(data.model(), data.logged_action[:, None], axis=1)[:, 0]
    return dm_terms(data) + data.importance_weight() * (data.reward - q_logged)


def switch_dr_terms(data: BanditData, tau: float) -> np.ndarray:
    """Switch-DR: DR's correction only where rho_i <= tau, plain DM elsewhere (tau = 0: DM; tau = inf: DR)."""
    rho = data.importance_weight()
    q_logged = np.take_along_axis(data.model(), data.logged_action[:, None], axis=1)[:, 0]
    return dm_terms(data) + np.where(rho <= tau, rho * (data.reward - q_logged), 0.0)


# --------------------------------------------------------------------------------------- estimators
def direct_method(data: BanditData, spec: BootstrapSpec) -> Estimate:
    """DM: the reward model's value of pi, V = 1/N sum_i sum_a pi(a|x_i) q(x_i, a)."""
    return _estimate("DM", weighted_mean(dm_terms(data)), data, spec)


def inverse_propensity_score(data: BanditData, spec: BootstrapSpec) -> Estimate:
    """IPS: V = 1/N sum_i rho_i r_i (unbiased when mu > 0 wherever pi > 0)."""
    return _estimate("IPS", weighted_mean(data.importance_weight() * data.reward), data, spec)


def self_normalized_ips(data: BanditData, spec: BootstrapSpec) -> Estimate:
    """SNIPS: V = sum_i rho_i r_i / sum_i rho_i (biased, consistent, bounded by the rewards' range)."""
    rho = data.importance_weight()
    return _estimate("SNIPS", weighted_ratio(rho * data.reward, rho), data, spec)


def doubly_robust(data: BanditData, spec: BootstrapSpec) -> Estimate:
    """DR: V = 1/N sum_i [sum_a pi(a|x_i) q(x_i,a) + rho_i (r_i - q(x_i, a_i))]."""
    return _estimate("DR", weighted_mean(dr_terms(data)), data, spec)


def switch_doubly_robust(data: BanditData, spec: BootstrapSpec, tau: float = 10.0) -> Estimate:
    """Switch-DR: DR on contexts with rho_i <= tau, DM on the rest (bounds the variance of large weights)."""
    return _estimate("Switch-DR", weighted_mean(switch_dr_terms(data, tau)), data, spec)


def evaluate_one_step(data: BanditData, spec: BootstrapSpec, switch_tau: float = 10.0) -> list[Estimate]:
    """Every one-step estimator on the same resamples; DM, DR and Switch-DR only with reward_predictions."""
    estimates = [inverse_propensity_score(data, spec), self_normalized_ips(data, spec)]
    if data.reward_predictions is not None:
        estimates = [
            direct_method(data, spec),
            *estimates,
            doubly_robust(data, spec),
            switch_doubly_robust(data, spec, switch_tau),
        ]
    return estimates


def _estimate(name: str, statistic: Statistic, data: BanditData, spec: BootstrapSpec) -> Estimate:
    return bootstrap_estimate(name, statistic, weighted_mean(data.reward), data.n, spec)
