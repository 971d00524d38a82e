"""Simulated users: a vectorized model of google recsim's long-term-satisfaction world.

The gymnasium views live in :mod:`reagent_recsys.envs.gym_env` (imported on demand; importing it registers the
``reagent_recsys/*LTS-v0`` ids).
"""

from reagent_recsys.envs.base import EnvStep, VectorEnv, env_factory, make_env, run_episodes, slate_size_of
from reagent_recsys.envs.lts import (
    PRESETS,
    FeatureSpec,
    LTSParams,
    StepResult,
    VectorLTS,
    feature_specs,
    rollout,
)

__all__ = ["PRESETS", "EnvStep", "FeatureSpec", "LTSParams", "StepResult", "VectorEnv", "VectorLTS", "env_factory",
           "feature_specs", "make_env", "rollout", "run_episodes", "slate_size_of"]
