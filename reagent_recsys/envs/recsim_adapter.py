"""google recsim behind the same interface as our `VectorLTS`, so the logging stage can use either.

`env.type: recsim` runs one recsim gym environment per user, stepped in a Python loop (recsim is the slow
reference). Built in: `long_term_satisfaction` (recsim's LTS user model fed with our `LTSParams`, so identical
configs mean identical worlds), `interest_evolution` and `interest_exploration` (recsim's own `create_environment`).
Add your own with `register_recsim_env(name, factory)`; modules in `env.recsim_plugins` are imported first.

A factory receives a dict with recsim's usual keys (`num_candidates`, `slate_size`, `resample_documents`, `seed`)
plus `params` (our `LTSParams`) and `env_config` (our `EnvConfig`), and returns a `RecSimGymEnv` over a
`SingleUserEnvironment` (old gym API: `reset()` -> obs, `step()` -> 4-tuple).

Conventions (the same for every recsim env):
- Candidate slot i is the i-th entry of recsim's doc-id keyed dict (the index recsim's `step` maps slates with).
- reward = engagement = recsim's reward aggregator (unclipped; recsim clips only the *observed* engagement);
  click = 1 when any slate item was clicked; satisfaction = the user's `satisfaction` before the step (nan when
  the user state has none, e.g. interest_*).
- Documents are drawn once per episode when `resample_documents` is false (recsim itself would keep them for the
  environment's whole life), else every step.
- Episodes end when recsim says so or after `time_budget` steps, whichever is first (interest_exploration never
  ends on its own). Users end at different times in interest_evolution: `active` (B,) tells which users are still
  in their episode. A finished user is no longer stepped; its later rows repeat its last state with reward,
  click and engagement 0, satisfaction nan and done True. Log a row only where `active` was True BEFORE `step`.
- Seeding: each user's recsim env gets its own seed from `rng`; recsim's user models also draw from the global
  `np.random`, so the adapter keeps a private global-RNG state and swaps it in around every reset/step
  (other users of `np.random` neither disturb nor are disturbed). Same `rng` seed -> same run.

State feature ids (a feature is present only when observed; `FeatureSpec` names say what they are):
0 `user.satisfaction` (only for user states with a satisfaction), 1 `response.click`, 2 `response.engagement`
(the last reward; clipped to [0, 100] for LTS like recsim's observation), 3 `time.progress` (t/T - 0.5),
10 + k the recsim user observation (`user.obs[k]`), 100 + slot * D + k document feature k of candidate `slot`
(`doc[slot].<name>`; the base moves to the next multiple of 100 when U > 90). For LTS (D = 1) that is
100 + slot, `doc[slot].clickbait`: the same features as `VectorLTS`.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from reagent_recsys.config import ConfigError, EnvConfig
from reagent_recsys.envs.lts import (
    DOC_ID_BASE,
    FeatureSpec,
    LTSParams,
    StepResult,
    observed_specs,
)

RecsimFactory = Callable[[dict[str, Any]], Any]

_REGISTRY: dict[str, RecsimFactory] = {}
_USER_ID_BASE = 10  # feature ids of the recsim user observation (ids 0-3 are those of VectorLTS)


def register_recsim_env(name: str, factory: RecsimFactory) -> None:
    """Make `env.recsim_env: <name>` build environments with `factory(config_dict)` (see the module docstring)."""
    if not name or not isinstance(name, str):
        raise ValueError(f"recsim env name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise TypeError(f"factory for recsim env {name!r} must be callable, got {type(factory).__name__}")
    _REGISTRY[name] = factory


def registered_recsim_envs() -> list[str]:
    """The names `env.recsim_env` accepts (built-in and registered)."""
    return sorted(_REGISTRY)


def _import_recsim() -> None:
    """Import recsim (and tensorflow) only when a recsim env is built; quiet TF's C++ start-up logging."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        importlib.import_module("recsim.simulator.recsim_gym")
    except ModuleNotFoundError:
        raise ConfigError("env.type: recsim needs google recsim, which the runtime environment leaves out "
                          "(it brings tensorflow, +1.1 GB); add it with ./scripts/install_extra.sh recsim") from None


# -------------------------------------------------------------------------------------- built-in envs
@functools.cache
def _lts_classes() -> SimpleNamespace:
    """recsim LTS classes extended to take our parameters (built once, after the lazy recsim import)."""
    _import_recsim()
    from recsim import user
    from recsim.environments import long_term_satisfaction as lts

    class UserSampler(lts.LTSStaticUserSampler):
        """recsim's static sampler with our parameters; a fixed starting NPE when `initial_npe` is set."""

        def __init__(self, params: LTSParams, seed: int) -> None:
            self._initial_npe = params.initial_npe
            super().__init__(
                user_ctor=lts.LTSUserState,
                memory_discount=params.memory_discount,
                sensitivity=params.sensitivity,
                innovation_stddev=params.innovation_stddev,
                choc_mean=params.choc_mean,
                choc_stddev=params.choc_stddev,
                kale_mean=params.kale_mean,
                kale_stddev=params.kale_stddev,
                time_budget=params.time_budget,
                seed=seed,
            )

        def sample_user(self):  # noqa: ANN202
            if self._initial_npe is None:
                return super().sample_user()  # NPE_0 = (U(0,1) - 0.5) / (1 - memory_discount)
            self._state_parameters["net_positive_exposure"] = self._initial_npe
            return self._user_ctor(**self._state_parameters)

    class UserModel(lts.LTSUserModel):
        """LTSUserModel whose constructor takes a ready sampler (recsim's hard-codes one with default params)."""

        def __init__(self, slate_size: int, sampler: UserSampler) -> None:
            user.AbstractUserModel.__init__(self, lts.LTSResponse, sampler, slate_size)

    class DocumentSampler(lts.LTSDocumentSampler):
        """uniform: clickbait ~ U(0,1); sweet_bitter: even slots U[0.8,1], odd slots U[0,0.2]."""

        def __init__(self, params: LTSParams, seed: int) -> None:
            super().__init__(seed=seed)
            self._sweet_bitter = params.document_sampler == "sweet_bitter"
            self._num_candidates = params.num_candidates

        def sample_document(self):  # noqa: ANN202
            if not self._sweet_bitter:
                return super().sample_document()
            slot = self._doc_count % self._num_candidates  # recsim always draws a full candidate set in order
            low = 0.8 if slot % 2 == 0 else 0.0
            doc = self._doc_ctor(doc_id=self._doc_count, clickbait_score=self._rng.uniform(low, low + 0.2))
            self._doc_count += 1
            return doc

    return SimpleNamespace(UserSampler=UserSampler, UserModel=UserModel, DocumentSampler=DocumentSampler)


def _make_long_term_satisfaction(config: dict[str, Any]) -> Any:
    """recsim's LTS world with our parameters: user sampler, fixed starting NPE and sweet_bitter documents."""
    _import_recsim()
    from recsim.environments import long_term_satisfaction as lts
    from recsim.simulator import environment, recsim_gym

    classes = _lts_classes()
    params: LTSParams = config["params"]
    raw = environment.Environment(
        classes.UserModel(config["slate_size"], classes.UserSampler(params, config["seed"])),
        classes.DocumentSampler(params, config["seed"] + 1),
        config["num_candidates"],
        config["slate_size"],
        resample_documents=config["resample_documents"],
    )
    return recsim_gym.RecSimGymEnv(raw, lts.clicked_engagement_reward)


def _make_interest_evolution(config: dict[str, Any]) -> Any:
    _import_recsim()
    from recsim.environments import interest_evolution

    return interest_evolution.create_environment(config)


def _make_interest_exploration(config: dict[str, Any]) -> Any:
    _import_recsim()
    from recsim.environments import interest_exploration

    return interest_exploration.create_environment(config)


register_recsim_env("long_term_satisfaction", _make_long_term_satisfaction)
register_recsim_env("interest_evolution", _make_interest_evolution)
register_recsim_env("interest_exploration", _make_interest_exploration)


def resolve_recsim_factory(env_config: EnvConfig) -> RecsimFactory:
    """Import `env.recsim_plugins`, then look `env.recsim_env` up; ConfigError naming the field otherwise."""
    for module in env_config.recsim_plugins:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"env.recsim_plugins: cannot import {module!r}: {exc}") from None
    try:
        return _REGISTRY[env_config.recsim_env]
    except KeyError:
        raise ConfigError(
            f"env.recsim_env: unknown recsim environment {env_config.recsim_env!r}; "
            f"registered: {', '.join(registered_recsim_envs())}"
        ) from None


# ------------------------------------------------------------------------------------ observation layout
@dataclass(frozen=True)
class _DocLayout:
    """How one recsim document observation flattens into D numbers."""

    names: tuple[str, ...]  # (D,) feature names
    keys: tuple[str, ...] | None  # dict observation: its keys in order; None: a bare array

    def flatten(self, docs: list[Any]) -> np.ndarray:  # -> (N, D)
        if self.keys is None:
            return np.asarray(docs, dtype=np.float64).reshape(len(docs), -1)
        columns = [np.asarray([d[k] for d in docs], dtype=np.float64).reshape(len(docs), -1) for k in self.keys]
        return np.concatenate(columns, axis=1)


def _space_size(space: Any) -> int:
    shape = getattr(space, "shape", None)
    return int(np.prod(shape)) if shape else 1


def _doc_layout(gym_env: Any) -> _DocLayout:
    """Names of the document features; a bare-array observation of LTS documents is named `clickbait`."""
    doc_space = next(iter(gym_env.observation_space["doc"].spaces.values()))
    spaces = getattr(doc_space, "spaces", None)
    if isinstance(spaces, dict):  # a dict observation, e.g. {"quality": Box(()), "cluster_id": Discrete}
        names: list[str] = []
        for key, sub in spaces.items():
            size = _space_size(sub)
            names.extend([key] if size == 1 else [f"{key}_{j}" for j in range(size)])
        return _DocLayout(tuple(names), tuple(spaces))
    size = _space_size(doc_space)
    documents = gym_env.environment.candidate_set.get_all_documents()
    if size == 1 and hasattr(documents[0], "clickbait_score"):  # recsim's LTSDocument (or a subclass)
        return _DocLayout(("clickbait",), None)
    return _DocLayout(tuple(f"feature_{k}" for k in range(size)), None)


# ------------------------------------------------------------------------------------------- the env
class RecsimVectorEnv:
    """B google recsim environments behind the `VectorLTS` interface (see the module docstring)."""

    def __init__(self, env_config: EnvConfig, num_users: int, rng: np.random.Generator) -> None:
        if num_users <= 0:
            raise ValueError(f"num_users must be positive, got {num_users}")
        self.params = LTSParams.from_config(env_config)
        self.env_name = env_config.recsim_env
        factory = resolve_recsim_factory(env_config)
        self.num_users = num_users
        self.num_actions = self.params.num_candidates
        self.slate_size = self.params.slate_size
        self.max_steps = self.params.time_budget

        seeds = rng.integers(0, 2**31 - 2, size=num_users + 1)
        self._rng_state = np.random.RandomState(int(seeds[0])).get_state()  # recsim's global-RNG draws
        with self._global_rng():
            self._envs = [factory(self._factory_config(env_config, int(s))) for s in seeds[1:]]
        first = self._envs[0]
        if not hasattr(first, "environment") or not hasattr(first, "observation_space"):
            raise TypeError(f"recsim env {self.env_name!r}: the factory must return a recsim RecSimGymEnv, "
                            f"got {type(first).__name__}")

        space = first.observation_space
        self._user_dim = _space_size(space["user"])
        self._docs = _doc_layout(first)
        # recsim's LTS observation clips engagement to [0, 100] (the reward is not clipped); VectorLTS does too.
        response_ctor = first.environment.user_model.get_response_model_ctor()
        self._engagement_clip = getattr(response_ctor, "MAX_ENGAGEMENT_MAGNITUDE", np.inf)
        self._has_satisfaction = hasattr(first.environment.user_model._user_state, "satisfaction")
        self.features = self._build_features()

        B, N, D = num_users, self.num_actions, len(self._docs.names)
        self._doc_values = np.zeros((B, N, D))  # (B, N, D) current candidates
        self._user_obs = np.zeros((B, self._user_dim))  # (B, U)
        self._satisfaction = np.full(B, np.nan)  # (B,) satisfaction now (after the last step)
        self._last_click = np.zeros(B)
        self._last_engagement = np.zeros(B)
        self._active = np.zeros(B, dtype=bool)
        self._t = 0

    def _factory_config(self, env_config: EnvConfig, seed: int) -> dict[str, Any]:
        return {
            "num_candidates": self.params.num_candidates,
            "slate_size": self.params.slate_size,
            "resample_documents": self.params.resample_documents,
            "seed": seed,
            "params": self.params,
            "env_config": env_config,
        }

    def _global_rng(self) -> _SwappedGlobalRNG:
        return _SwappedGlobalRNG(self)

    def _build_features(self) -> list[FeatureSpec]:
        p = self.params
        specs = observed_specs(p, self._has_satisfaction)
        specs.extend(FeatureSpec(_USER_ID_BASE + k, f"user.obs[{k}]", "user") for k in range(self._user_dim))
        doc_base = max(DOC_ID_BASE, -(-(_USER_ID_BASE + self._user_dim) // 100) * 100)  # next multiple of 100
        D = len(self._docs.names)
        for slot in range(self.num_actions):
            specs.extend(
                FeatureSpec(doc_base + slot * D + k, f"doc[{slot}].{name}", "document", slot)
                for k, name in enumerate(self._docs.names)
            )
        return specs

    # ---------------------------------------------------------------------------------- interface
    @property
    def active(self) -> np.ndarray:
        """(B,) bool: users still in their episode (the next `step` is a real step for them)."""
        return self._active.copy()

    @property
    def doc_features(self) -> dict[str, np.ndarray]:
        """{name: (B, N) float64} document features of the current candidates, in candidate-slot order."""
        return {name: self._doc_values[:, :, k].copy() for k, name in enumerate(self._docs.names)}

    def reset(self) -> np.ndarray:
        """Start a new episode for every user; return the (B, F) float32 initial state."""
        with self._global_rng():
            for b, env in enumerate(self._envs):
                if not self.params.resample_documents:
                    env.environment._do_resample_documents()  # recsim would keep one set for the env's life
                self._observe(b, env.reset())
        self._last_click[:] = 0.0
        self._last_engagement[:] = 0.0
        self._active[:] = True
        self._t = 0
        return self._state()

    def step(self, slates: np.ndarray) -> StepResult:
        """Serve `slates` ((B, S) candidate slots, or (B,) = one item per slate); advance every active user."""
        slates = self._check_slates(slates)
        if not self._active.any():
            raise RuntimeError("every episode has ended; call reset() first")
        B = self.num_users
        active = self._active.copy()
        reward = np.zeros(B)
        click = np.zeros(B)
        satisfaction = np.full(B, np.nan)
        recsim_done = np.zeros(B, dtype=bool)
        satisfaction[active] = self._satisfaction[active]  # the satisfaction the user responds with
        with self._global_rng():
            for b in np.flatnonzero(active):
                obs, r, done, _ = self._envs[b].step(slates[b])
                reward[b] = r
                click[b] = float(any(resp["click"] for resp in obs["response"]))
                recsim_done[b] = done
                self._observe(b, obs)
        self._t += 1
        self._last_click[active] = click[active]
        self._last_engagement[active] = reward[active]
        ended = active & (recsim_done | (self._t >= self.max_steps))
        self._active = active & ~ended
        return StepResult(
            state=self._state(),
            reward=reward,
            done=~self._active,
            click=click,
            engagement=reward.copy(),
            satisfaction=satisfaction,
        )

    # ---------------------------------------------------------------------------------- internals
    def _check_slates(self, slates: np.ndarray) -> np.ndarray:
        slates = np.asarray(slates)
        if slates.ndim == 1:
            slates = slates[:, None]
        if slates.ndim != 2 or slates.shape[0] != self.num_users or not 1 <= slates.shape[1] <= self.slate_size:
            raise ValueError(f"slates must have shape ({self.num_users},) or ({self.num_users}, k) with "
                             f"1 <= k <= slate_size={self.slate_size}, got {slates.shape}")
        if not np.issubdtype(slates.dtype, np.integer):
            raise ValueError(f"slates must hold integer candidate slots, got dtype {slates.dtype}")
        bad = (slates < 0) | (slates >= self.num_actions)
        if bad.any():
            raise ValueError(f"slates: {int(bad.sum())} entries outside [0, {self.num_actions}), "
                             f"e.g. {slates[bad][:5].tolist()}")
        return slates.astype(np.int64)

    def _observe(self, b: int, obs: dict[str, Any]) -> None:
        """Copy user b's recsim observation (doc-id keyed dict, candidate order) into the arrays."""
        self._doc_values[b] = self._docs.flatten(list(obs["doc"].values()))
        if self._user_dim:
            self._user_obs[b] = np.asarray(obs["user"], dtype=np.float64).ravel()
        if self._has_satisfaction:
            self._satisfaction[b] = self._envs[b].environment.user_model._user_state.satisfaction

    def _state(self) -> np.ndarray:  # -> (B, F) float32
        columns = []
        p = self.params
        if p.observe_satisfaction and self._has_satisfaction:
            columns.append(self._satisfaction[:, None])
        if p.observe_response:
            observed = np.clip(self._last_engagement, 0.0, self._engagement_clip)
            columns += [self._last_click[:, None], observed[:, None]]
        if p.observe_time:
            columns.append(np.full((self.num_users, 1), self._t / self.max_steps - 0.5))
        columns += [self._user_obs, self._doc_values.reshape(self.num_users, -1)]
        return np.concatenate(columns, axis=1).astype(np.float32)


class _SwappedGlobalRNG:
    """Context manager: install the env's private `np.random` state, and store it back (restoring the caller's)."""

    def __init__(self, env: RecsimVectorEnv) -> None:
        self._env = env
        self._saved: Any = None

    def __enter__(self) -> None:
        self._saved = np.random.get_state()
        np.random.set_state(self._env._rng_state)

    def __exit__(self, *exc: object) -> None:
        self._env._rng_state = np.random.get_state()
        np.random.set_state(self._saved)


# The one factory and slate_size_of live in envs.base (re-exported here for existing imports).
from reagent_recsys.envs.base import make_env, slate_size_of  # noqa: E402

__all__ = ["RecsimVectorEnv", "make_env", "register_recsim_env", "registered_recsim_envs", "slate_size_of"]
