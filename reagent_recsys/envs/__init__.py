"""Simulated users: a vectorized model of google recsim's long-term-satisfaction world.

The gymnasium views live in :mod:`reagent_recsys.envs.gym_env` (imported on demand; importing it registers the
``reagent_recsys/*LTS-v0`` ids).
"""

from reagent_recsys.envs.lts import (
    PRESETS,
    FeatureSpec,
    LTSParams,
    StepResult,
    VectorLTS,
    feature_specs,
    rollout,
)

__all__ = ["PRESETS", "FeatureSpec", "LTSParams", "StepResult", "VectorLTS", "feature_specs", "rollout"]
