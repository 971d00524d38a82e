"""The simulator interface, its one factory and its one rollout loop.

Every simulator (`VectorLTS`, the google-recsim adapter) is a `VectorEnv`: B users stepping in lockstep.
`make_env` builds the one `env.type` asks for; `run_episodes` runs a batch of episodes to their end and hands
every step to a callback: the logging stage (workflow.offline_gym) records the steps, the ground truth
(evaluation.ground_truth.simulate) sums the rewards, `lts.rollout` is the simulator's own quick check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from reagent_recsys.config import ConfigError, EnvConfig
from reagent_recsys.envs.lts import FeatureSpec, LTSParams, StepResult, VectorLTS

MAX_STEPS = 100_000  # guard against an env whose episodes never end


@runtime_checkable
class VectorEnv(Protocol):
    """B simulated users stepping in lockstep (episodes may end at different steps: see `StepResult.done`)."""

    features: list[FeatureSpec]  # the state columns, in order
    num_actions: int  # candidate slots offered each step
    num_users: int  # B

    @property
    def doc_features(self) -> Mapping[str, np.ndarray]:
        """The current candidates' features: name -> (B, num_actions)."""
        ...

    def reset(self) -> np.ndarray:
        """Start new episodes; the (B, F) float32 initial state."""
        ...

    def step(self, slates: np.ndarray) -> StepResult:
        """Show each user a slate ((B, S) candidate slots, or (B,) the first item only); advance one step."""
        ...


EnvFactory = Callable[[int, np.random.Generator], VectorEnv]  # (num_users, rng) -> env


def make_env(env_config: EnvConfig, num_users: int, rng: np.random.Generator) -> VectorEnv:
    """The simulator `env.type` asks for: our `VectorLTS` (`lts`) or google recsim (`recsim`, imported lazily)."""
    if env_config.type == "lts":
        return VectorLTS(LTSParams.from_config(env_config), num_users, rng)
    if env_config.type == "recsim":
        from reagent_recsys.envs.recsim_adapter import RecsimVectorEnv

        return RecsimVectorEnv(env_config, num_users, rng)
    raise ConfigError(f"env.type: unknown simulator {env_config.type!r} (allowed: lts, recsim)")


def env_factory(env_config: EnvConfig) -> EnvFactory:
    """(num_users, rng) -> a simulator of `env_config`."""
    return lambda num_users, rng: make_env(env_config, num_users, rng)


def slate_size_of(env: VectorEnv) -> int:
    """Items per slate of a VectorLTS (params.slate_size) or recsim adapter (slate_size) env."""
    params = getattr(env, "params", None)
    return int(getattr(params, "slate_size", None) or getattr(env, "slate_size", 1))


@dataclass(frozen=True)
class EnvStep:
    """One lockstep step of a batch of episodes, as `run_episodes` hands it to its callback."""

    t: int
    state: np.ndarray  # (B, F) the state the action was chosen in
    slates: np.ndarray  # (B, S) or (B,) what was shown
    info: Any  # what `act` returned beside the slates (e.g. the logging propensities)
    result: StepResult  # reward, done, next state, ...
    alive: np.ndarray  # (B,) users still in their episode BEFORE this step (count only their rows)


Act = Callable[[np.ndarray, Mapping[str, np.ndarray]], tuple[np.ndarray, Any]]  # (state, docs) -> (slates, info)


def run_episodes(env: VectorEnv, state: np.ndarray, act: Act, on_step: Callable[[EnvStep], None]) -> int:
    """Run the episodes of `env` (already reset, initial `state` (B, F)) to their end; return the steps taken."""
    alive = np.ones(len(state), dtype=bool)  # (B,)
    for t in range(MAX_STEPS):
        slates, info = act(state, env.doc_features)
        result = env.step(slates)
        on_step(EnvStep(t, state, slates, info, result, alive))
        alive = alive & ~np.asarray(result.done, dtype=bool)
        state = result.state
        if not alive.any():
            return t + 1
    raise RuntimeError(f"episodes did not end within {MAX_STEPS} steps")
