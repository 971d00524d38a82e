"""Counterfactual policy evaluation: one-step and sequential estimators, FQE, each with a bootstrap interval.

Every estimator returns an ``Estimate`` (value, 95% interval, value relative to the logged policy and its
interval); see ``bootstrap`` for what "relative" means. The whole pipeline (model fits and refits, every
estimator, trust diagnostics, ranking of candidates) is ``pipeline.run_cpe``: it needs a training table's splits
and target probabilities, never a simulator (simulator ground truth is ``simulated``, used only with an env).
"""

from reagent_recsys.evaluation.bootstrap import BootstrapSpec, Estimate, EvaluationDataError
from reagent_recsys.evaluation.fqe import FittedQ, fit_fqe, fit_reward_model, fqe_settings
from reagent_recsys.evaluation.magic import MagicBlend, magic, magic_blend
from reagent_recsys.evaluation.one_step import (
    BanditData,
    direct_method,
    doubly_robust,
    evaluate_one_step,
    inverse_propensity_score,
    self_normalized_ips,
    self_normalized_weights,
    switch_doubly_robust,
)
from reagent_recsys.evaluation.pipeline import CPEReport, Target, run_cpe
from reagent_recsys.evaluation.sequential import (
    EpisodeData,
    pad_episodes,
    per_decision_importance_sampling,
    sequential_direct_method,
    sequential_doubly_robust,
    weighted_doubly_robust,
    weighted_per_decision_importance_sampling,
)
from reagent_recsys.evaluation.suite import evaluate_sequential

__all__ = [
    "BanditData",
    "BootstrapSpec",
    "CPEReport",
    "EpisodeData",
    "Estimate",
    "EvaluationDataError",
    "FittedQ",
    "MagicBlend",
    "Target",
    "direct_method",
    "doubly_robust",
    "evaluate_one_step",
    "evaluate_sequential",
    "fit_fqe",
    "fit_reward_model",
    "fqe_settings",
    "inverse_propensity_score",
    "magic",
    "magic_blend",
    "pad_episodes",
    "per_decision_importance_sampling",
    "run_cpe",
    "self_normalized_ips",
    "self_normalized_weights",
    "sequential_direct_method",
    "sequential_doubly_robust",
    "switch_doubly_robust",
    "weighted_doubly_robust",
    "weighted_per_decision_importance_sampling",
]
