"""Run every sequential estimator on one EpisodeData with the same resamples (the workflow's entry point)."""

from __future__ import annotations

from reagent_recsys.evaluation.bootstrap import BootstrapSpec, Estimate
from reagent_recsys.evaluation.magic import magic
from reagent_recsys.evaluation.sequential import (
    EpisodeData,
    per_decision_importance_sampling,
    sequential_direct_method,
    sequential_doubly_robust,
    weighted_doubly_robust,
    weighted_per_decision_importance_sampling,
)


def evaluate_sequential(
    data: EpisodeData, spec: BootstrapSpec, num_j_steps: int = 10, model_name: str = "FQE"
) -> list[Estimate]:
    """PDIS and WPDIS; with q_estimates also the model's value (named `model_name`), DR, WDR and MAGIC."""
    estimates = [per_decision_importance_sampling(data, spec), weighted_per_decision_importance_sampling(data, spec)]
    if data.q_estimates is not None:
        estimates += [
            sequential_direct_method(data, spec, name=model_name),
            sequential_doubly_robust(data, spec),
            weighted_doubly_robust(data, spec),
            magic(data, spec, num_j_steps),
        ]
    return estimates
