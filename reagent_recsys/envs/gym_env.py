"""gymnasium views of the long-term-satisfaction simulator, so outside agents can use it.

* :class:`LTSGymEnv`: one user; Box observation in the :func:`feature_specs` order; ``Discrete(num_candidates)``
  actions, or ``MultiDiscrete([num_candidates] * slate_size)`` slates when ``slate_size > 1``.
* :class:`LTSVectorEnv`: ``num_envs`` users on one :class:`VectorLTS` (no per-user Python loop), with gymnasium's
  default next-step autoreset: the ``step`` after the (common) last step resets every user and ignores the actions.

Importing this module registers ``reagent_recsys/LTS-v0`` (recsim preset), ``reagent_recsys/StrongLTS-v0`` and
``reagent_recsys/SweetBitterLTS-v0``; ``gymnasium.make(id, **overrides)`` and ``gymnasium.make_vec(id, num_envs)``
accept any :class:`LTSParams` field as a keyword override.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from reagent_recsys.envs.lts import MAX_OBSERVED_ENGAGEMENT, FeatureSpec, LTSParams, VectorLTS, feature_specs

_LOW_HIGH = {  # observation bounds per feature kind/name
    "user.satisfaction": (0.0, 1.0),
    "response.click": (0.0, 1.0),
    "response.engagement": (0.0, MAX_OBSERVED_ENGAGEMENT),
    "time.progress": (-0.5, 0.5),
}


def _params(params: LTSParams | None, preset: str, overrides: dict[str, Any]) -> LTSParams:
    if params is not None:
        if overrides:
            raise TypeError(f"pass either params or keyword overrides, not both (got {sorted(overrides)})")
        return params
    return LTSParams.preset(preset, **overrides)


def observation_space(features: list[FeatureSpec]) -> spaces.Box:
    """The Box of one user's state, bounds per feature (document clickbait scores lie in [0, 1])."""
    low = np.array([_LOW_HIGH.get(f.name, (0.0, 1.0))[0] for f in features], dtype=np.float32)
    high = np.array([_LOW_HIGH.get(f.name, (0.0, 1.0))[1] for f in features], dtype=np.float32)
    return spaces.Box(low=low, high=high, dtype=np.float32)


def action_space(params: LTSParams) -> spaces.Space:
    """Discrete candidate slot, or a MultiDiscrete slate of slots when slate_size > 1."""
    if params.slate_size == 1:
        return spaces.Discrete(params.num_candidates)
    return spaces.MultiDiscrete(np.full(params.slate_size, params.num_candidates))


class LTSGymEnv(gymnasium.Env[np.ndarray, Any]):
    """One simulated user as a gymnasium environment (episodes terminate after time_budget steps)."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, params: LTSParams | None = None, preset: str = "sweet_bitter", **overrides: Any):
        self.params = _params(params, preset, overrides)
        self.features = feature_specs(self.params)
        self.observation_space = observation_space(self.features)
        self.action_space = action_space(self.params)
        self._sim: VectorLTS | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._sim = VectorLTS(self.params, 1, self.np_random)
        state = self._sim.reset()  # (1, F)
        return state[0], {"clickbait": self._sim.clickbait[0].copy()}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._sim is None:
            raise RuntimeError("call reset() before step()")
        slate = np.asarray(action, dtype=np.int64).reshape(1, -1)  # (1, S) or (1, 1)
        if slate.shape[1] == 1:
            slate = slate[:, 0]  # (1,)
        result = self._sim.step(slate)
        info = {
            "click": float(result.click[0]),
            "engagement": float(result.engagement[0]),
            "satisfaction": float(result.satisfaction[0]),
            "clickbait": self._sim.clickbait[0].copy(),
        }
        return result.state[0], float(result.reward[0]), bool(result.done[0]), False, info


class LTSVectorEnv(VectorEnv):
    """`num_envs` users stepping in lockstep on one VectorLTS; next-step autoreset."""

    metadata: dict[str, Any] = {"render_modes": [], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self, num_envs: int, params: LTSParams | None = None, preset: str = "sweet_bitter", **overrides: Any
    ):
        self.num_envs = num_envs
        self.params = _params(params, preset, overrides)
        self.features = feature_specs(self.params)
        self.single_observation_space = observation_space(self.features)
        self.single_action_space = action_space(self.params)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._sim: VectorLTS | None = None
        self._needs_reset = True

    def _infos(self, **arrays: np.ndarray) -> dict[str, np.ndarray]:
        infos: dict[str, np.ndarray] = {}
        for key, value in arrays.items():
            infos[key] = value
            infos[f"_{key}"] = np.ones(self.num_envs, dtype=bool)  # gymnasium's "present for env i" mask
        return infos

    def reset(
        self, *, seed: int | list[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if isinstance(seed, list):
            seed = seed[0]  # one generator drives every user
        if seed is not None or self._np_random is None:
            self._np_random, self._np_random_seed = seeding.np_random(seed)
        self._sim = VectorLTS(self.params, self.num_envs, self._np_random)
        self._needs_reset = False
        state = self._sim.reset()
        return state, self._infos(clickbait=self._sim.clickbait.copy())

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._sim is None:
            raise RuntimeError("call reset() before step()")
        zeros = np.zeros(self.num_envs, dtype=bool)
        if self._needs_reset:  # next-step autoreset: the actions are ignored
            state = self._sim.reset()
            self._needs_reset = False
            infos = self._infos(clickbait=self._sim.clickbait.copy())
            return state, np.zeros(self.num_envs), zeros, zeros.copy(), infos
        result = self._sim.step(np.asarray(actions, dtype=np.int64))
        self._needs_reset = bool(result.done[0])
        infos = self._infos(
            click=result.click, engagement=result.engagement, satisfaction=result.satisfaction,
            clickbait=self._sim.clickbait.copy(),
        )
        return result.state, result.reward, result.done.copy(), zeros, infos


_IDS = {"LTS-v0": "recsim", "StrongLTS-v0": "strong", "SweetBitterLTS-v0": "sweet_bitter"}
for _name, _preset in _IDS.items():
    if f"reagent_recsys/{_name}" not in gymnasium.registry:
        gymnasium.register(
            id=f"reagent_recsys/{_name}",
            entry_point="reagent_recsys.envs.gym_env:LTSGymEnv",
            vector_entry_point="reagent_recsys.envs.gym_env:LTSVectorEnv",
            kwargs={"preset": _preset},
        )
