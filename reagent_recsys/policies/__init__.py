"""Logging (behaviour) policies that generate the logged data."""

from reagent_recsys.policies.logging import (
    EpsilonGreedyPolicy,
    ExportedLoggingPolicy,
    GreedyPolicy,
    LoggingPolicy,
    MixturePolicy,
    RandomPolicy,
    SoftmaxPolicy,
    build_policy,
    sample_categorical,
)

__all__ = [
    "EpsilonGreedyPolicy",
    "ExportedLoggingPolicy",
    "GreedyPolicy",
    "LoggingPolicy",
    "MixturePolicy",
    "RandomPolicy",
    "SoftmaxPolicy",
    "build_policy",
    "sample_categorical",
]
