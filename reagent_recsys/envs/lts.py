"""A vectorized model of google recsim's long-term-satisfaction (choc/kale) world.

The equations follow recsim 0.2.4 ``recsim/environments/long_term_satisfaction.py`` exactly:

* each user has a net positive exposure NPE and ``satisfaction = sigmoid(sensitivity * NPE)``;
* the user always clicks the FIRST slate item, with clickbait score ``c``; the engagement is
  ``exp(N(mu, sigma))`` with ``mu = (c * choc_mean + (1 - c) * kale_mean) * satisfaction`` and
  ``sigma = c * choc_stddev + (1 - c) * kale_stddev``, using the satisfaction BEFORE this step's update
  (recsim calls ``simulate_response`` before ``update_state``);
* then ``NPE <- memory_discount * NPE - 2 * (c - 0.5) + N(0, innovation_stddev)`` and satisfaction is recomputed;
* the reward is the (unclipped) engagement; an episode lasts ``time_budget`` steps.

State features (ids are stable for given params; a feature is present only when observed):

====== ======================== ==========================================================
id     name                     meaning
====== ======================== ==========================================================
0      ``user.satisfaction``    satisfaction (observe_satisfaction)
1      ``response.click``       last click, 0 at reset (observe_response)
2      ``response.engagement``  last engagement, clipped to [0, 100] like recsim's observation, 0 at reset
3      ``time.progress``        ``t / time_budget - 0.5`` with t the steps taken so far (observe_time)
100+i  ``doc[i].clickbait``     clickbait score of candidate slot i (always)
====== ======================== ==========================================================

Randomness comes only from the ``numpy.random.Generator`` passed in: same seed, same trajectories.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from reagent_recsys.config import ConfigError

if TYPE_CHECKING:
    from reagent_recsys.config import EnvConfig

SATISFACTION_ID, CLICK_ID, ENGAGEMENT_ID, TIME_ID, DOC_ID_BASE = 0, 1, 2, 3, 100
MAX_OBSERVED_ENGAGEMENT = 100.0  # recsim's LTSResponse.MAX_ENGAGEMENT_MAGNITUDE (observation clip only)
DOCUMENT_SAMPLERS = ("uniform", "sweet_bitter")

_RECSIM = {
    # recsim's LTSStaticUserSampler defaults.
    "memory_discount": 0.7, "sensitivity": 0.01, "innovation_stddev": 0.05,
    "choc_mean": 5.0, "choc_stddev": 1.0, "kale_mean": 4.0, "kale_stddev": 1.0, "time_budget": 60,
    # recsim's create_environment has no default for these two (the caller's env_config must give them);
    # we take 10 candidates and a one-item slate (the user only ever looks at the first item).
    "num_candidates": 10, "slate_size": 1,
    "initial_npe": None, "document_sampler": "uniform", "resample_documents": True,
    # recsim's LTS user observation is empty (satisfaction latent); its observation carries the responses.
    "observe_satisfaction": False, "observe_response": True, "observe_time": False,
}

PRESETS: dict[str, dict[str, object]] = {
    "recsim": _RECSIM,
    # The tutorial's StrongLTS ("LTSWithStrongerDissatisfactionEffect"). A public copy of the RLlib RecSys
    # tutorial code sets sensitivity 0.058; we take the quoted 0.06. Random policy over 200k episodes: 1158.03
    # (0.06) vs 1157.92 (0.058); google recsim with 0.06: 1157.96 +- 0.18. Its wrapper observes satisfaction.
    "strong": {
        **_RECSIM,
        "sensitivity": 0.06, "time_budget": 120, "choc_stddev": 0.1, "kale_stddev": 0.1,
        "num_candidates": 20, "observe_satisfaction": True, "observe_response": False,
    },
    # The RecSys-2022 tutorial world: sweet (even slots, clickbait U[0.8, 1]) vs bitter (odd slots, U[0, 0.2])
    # candidates, deterministic dynamics and a time feature. The fixed starting NPE of 1.0 matters: it gives the
    # published random ~99 / sweetest ~56.5 / bitterest ~10.9; recsim's random draw gives 80.6 / 36.7 / 10.8,
    # a starting NPE of 0 gives 76.6 / 29.0 / 10.8. "Bitterest" is argmin over the 20 candidates (~0.02).
    "sweet_bitter": {
        **_RECSIM,
        "sensitivity": 0.9, "innovation_stddev": 1e-5,
        "choc_mean": 5.0, "choc_stddev": 0.0, "kale_mean": 0.0, "kale_stddev": 0.0, "time_budget": 10,
        "num_candidates": 20, "slate_size": 1, "initial_npe": 1.0, "document_sampler": "sweet_bitter",
        "observe_satisfaction": True, "observe_response": False, "observe_time": True,
    },
}


@dataclass(frozen=True)
class LTSParams:
    """Every parameter of the simulated world (see the module docstring for the equations).

    ``initial_npe=None`` draws recsim's starting NPE ``(U(0,1) - 0.5) / (1 - memory_discount)`` per user.
    """

    memory_discount: float
    sensitivity: float
    innovation_stddev: float
    choc_mean: float
    choc_stddev: float
    kale_mean: float
    kale_stddev: float
    time_budget: int
    num_candidates: int
    slate_size: int
    initial_npe: float | None
    document_sampler: str
    resample_documents: bool
    observe_satisfaction: bool
    observe_response: bool
    observe_time: bool

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.memory_discount < 1:
            problems.append(("memory_discount", "must be in [0, 1)"))
        for name in ("innovation_stddev", "choc_stddev", "kale_stddev"):
            if getattr(self, name) < 0:
                problems.append((name, "must be >= 0"))
        for name in ("time_budget", "num_candidates", "slate_size"):
            if getattr(self, name) < 1:
                problems.append((name, "must be >= 1"))
        if self.document_sampler not in DOCUMENT_SAMPLERS:
            problems.append(("document_sampler", f"must be one of {', '.join(DOCUMENT_SAMPLERS)}"))
        if self.slate_size > self.num_candidates:
            problems.append(("slate_size", f"must be <= num_candidates ({self.num_candidates})"))
        if problems:
            name, rule = problems[0]
            raise ConfigError(f"env.{name}: {rule} (got {getattr(self, name)!r})")

    @classmethod
    def preset(cls, name: str, **overrides: object) -> LTSParams:
        """A preset's parameters with keyword overrides.

        `None` values keep the preset's; ``initial_npe="random"`` asks for recsim's random starting NPE.
        """
        if name not in PRESETS:
            raise ConfigError(f"env.preset: unknown preset {name!r}; available: {', '.join(PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"env.{unknown[0]}: unknown parameter; allowed: {', '.join(sorted(known))}")
        values = dict(PRESETS[name])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["initial_npe"] == "random":  # EnvConfig's way to ask for recsim's random draw (None here)
            values["initial_npe"] = None
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def from_config(cls, env: EnvConfig) -> LTSParams:
        """The preset named by `env.preset` with every non-null field of `env` overriding it."""
        overrides = {f.name: getattr(env, f.name) for f in fields(cls)}
        return cls.preset(env.preset, **overrides)


@dataclass(frozen=True)
class FeatureSpec:
    """One state feature: a stable id, a self-explanatory name and its kind."""

    id: int
    name: str
    kind: str  # "user" | "response" | "time" | "document"
    slot: int | None = None  # candidate slot for document features


def observed_specs(params: LTSParams, has_satisfaction: bool = True) -> list[FeatureSpec]:
    """The user, response and time features `params` observes, in state order (documents come after)."""
    specs = []
    if params.observe_satisfaction and has_satisfaction:
        specs.append(FeatureSpec(SATISFACTION_ID, "user.satisfaction", "user"))
    if params.observe_response:
        specs.append(FeatureSpec(CLICK_ID, "response.click", "response"))
        specs.append(FeatureSpec(ENGAGEMENT_ID, "response.engagement", "response"))
    if params.observe_time:
        specs.append(FeatureSpec(TIME_ID, "time.progress", "time"))
    return specs


def feature_specs(params: LTSParams) -> list[FeatureSpec]:
    """The state feature order for `params` (see the table in the module docstring)."""
    specs = observed_specs(params)
    specs.extend(
        FeatureSpec(DOC_ID_BASE + i, f"doc[{i}].clickbait", "document", slot=i) for i in range(params.num_candidates)
    )
    return specs


@dataclass
class StepResult:
    """What one lockstep step of all users returns."""

    state: np.ndarray  # (B, F) float32 state after the step (the next state)
    reward: np.ndarray  # (B,) float64 engagement
    done: np.ndarray  # (B,) bool, all True together at t == time_budget
    click: np.ndarray  # (B,) float64, always 1 in LTS
    engagement: np.ndarray  # (B,) float64
    satisfaction: np.ndarray  # (B,) float64 satisfaction the user had when responding


RESPONSE_METRICS = ("click", "engagement", "satisfaction")  # the StepResult fields logged as mdp-table metrics


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-x) overflows to inf for x << 0, which correctly gives 0
        return 1.0 / (1.0 + np.exp(-x))


class VectorLTS:
    """B users stepping in lockstep; all episodes last params.time_budget steps."""

    def __init__(self, params: LTSParams, num_users: int, rng: np.random.Generator):
        if num_users < 1:
            raise ValueError(f"num_users must be >= 1, got {num_users}")
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
        self.params = params
        self.num_users = num_users
        self.rng = rng
        self.features: list[FeatureSpec] = feature_specs(params)
        self.num_actions: int = params.num_candidates
        self.t = 0
        self._started = False
        self._rows = np.arange(num_users)  # (B,)
        b, n = num_users, params.num_candidates
        self.npe = np.zeros(b)  # (B,)
        self.satisfaction = np.full(b, 0.5)  # (B,)
        self.last_click = np.zeros(b)  # (B,)
        self.last_engagement = np.zeros(b)  # (B,)
        self.clickbait = np.zeros((b, n))  # (B, N)

    # ------------------------------------------------------------------------------------------ state
    @property
    def doc_features(self) -> dict[str, np.ndarray]:
        """The current candidates' features: {"clickbait": (B, N) float64}, read-only."""
        return {"clickbait": self.clickbait}

    def _sample_documents(self) -> np.ndarray:
        b, n = self.num_users, self.params.num_candidates
        docs = self.rng.random((b, n))  # (B, N)
        if self.params.document_sampler == "sweet_bitter":
            sweet = (np.arange(n) % 2 == 0)[None, :]  # (1, N) even slots
            docs = np.where(sweet, 0.8 + 0.2 * docs, 0.2 * docs)
        docs.flags.writeable = False  # handed to policies through doc_features
        return docs

    def _state(self) -> np.ndarray:
        p = self.params
        cols: list[np.ndarray] = []
        if p.observe_satisfaction:
            cols.append(self.satisfaction[:, None])
        if p.observe_response:
            cols.append(self.last_click[:, None])
            cols.append(np.minimum(self.last_engagement, MAX_OBSERVED_ENGAGEMENT)[:, None])  # engagement > 0
        if p.observe_time:
            cols.append(np.full((self.num_users, 1), self.t / p.time_budget - 0.5))
        cols.append(self.clickbait)
        return np.concatenate(cols, axis=1).astype(np.float32)  # (B, F)

    # ------------------------------------------------------------------------------------------- steps
    def reset(self) -> np.ndarray:
        """Start new episodes for all users; return the (B, F) float32 initial state."""
        p = self.params
        if p.initial_npe is None:  # recsim: (U(0,1) - 0.5) / (1 - memory_discount)
            self.npe = (self.rng.random(self.num_users) - 0.5) / (1.0 - p.memory_discount)
        else:
            self.npe = np.full(self.num_users, float(p.initial_npe))
        self.satisfaction = _sigmoid(p.sensitivity * self.npe)
        self.last_click = np.zeros(self.num_users)
        self.last_engagement = np.zeros(self.num_users)
        # Documents are drawn at every reset; with resample_documents false they then stay fixed for the episode
        # (recsim would even keep them across episodes).
        self.clickbait = self._sample_documents()
        self.t = 0
        self._started = True
        return self._state()

    def _first_items(self, slates: np.ndarray) -> np.ndarray:
        slates = np.asarray(slates)
        b, p = self.num_users, self.params
        if slates.ndim == 1:
            first = slates
        elif slates.ndim == 2 and slates.shape[1] == p.slate_size:
            first = slates[:, 0]
        else:
            raise ValueError(f"slates must have shape ({b},) or ({b}, {p.slate_size}), got {slates.shape}")
        if first.shape[0] != b:
            raise ValueError(f"slates must have {b} rows (one per user), got {first.shape[0]}")
        if slates.dtype.kind not in "iu":
            raise ValueError(f"slates must hold integer candidate slots, got dtype {slates.dtype}")
        bad = (slates < 0) | (slates >= p.num_candidates)
        if bad.any():
            raise ValueError(
                f"slates: {int(bad.sum())} slot(s) outside [0, {p.num_candidates}), e.g. {slates[bad][:5].tolist()}"
            )
        return first.astype(np.int64)

    def step(self, slates: np.ndarray) -> StepResult:
        """Show each user a slate ((B, slate_size) ints, or (B,) = the first item only); advance one step."""
        if not self._started:
            raise RuntimeError("call reset() before step() (and again after the episode is done)")
        p = self.params
        first = self._first_items(slates)  # (B,)
        c = self.clickbait[self._rows, first]  # (B,) clickbait of the clicked item
        sat = self.satisfaction  # (B,) before this step's update, as in recsim
        mu = (c * p.choc_mean + (1.0 - c) * p.kale_mean) * sat
        sigma = c * p.choc_stddev + (1.0 - c) * p.kale_stddev
        engagement = np.exp(mu + sigma * self.rng.standard_normal(self.num_users))  # (B,)
        innovation = p.innovation_stddev * self.rng.standard_normal(self.num_users)
        self.npe = p.memory_discount * self.npe - 2.0 * (c - 0.5) + innovation
        self.satisfaction = _sigmoid(p.sensitivity * self.npe)
        click = np.ones(self.num_users)
        self.last_click, self.last_engagement = click, engagement
        self.t += 1
        if p.resample_documents:
            self.clickbait = self._sample_documents()
        done_now = self.t >= p.time_budget
        if done_now:
            self._started = False
        return StepResult(
            state=self._state(),
            reward=engagement.copy(),
            done=np.full(self.num_users, done_now),
            click=click,
            engagement=engagement,
            satisfaction=sat,
        )


def rollout(
    params: LTSParams,
    act: Callable[[np.ndarray, dict[str, np.ndarray]], np.ndarray],
    num_episodes: int,
    rng: np.random.Generator,
    batch_size: int = 4096,
) -> np.ndarray:
    """Run `act(state (B,F), doc_features) -> actions (B,) or slates (B,S)` for num_episodes; return the
    (num_episodes,) undiscounted returns: the simulator's own quick check for stateless policies (through the
    one rollout loop, `envs.base.run_episodes`)."""
    from reagent_recsys.envs.base import run_episodes

    if num_episodes < 1 or batch_size < 1:
        raise ValueError(f"num_episodes and batch_size must be >= 1, got {num_episodes}, {batch_size}")
    returns = []
    for start in range(0, num_episodes, batch_size):
        env = VectorLTS(params, min(batch_size, num_episodes - start), rng)
        total = np.zeros(env.num_users)  # (B,)

        def add(step, total: np.ndarray = total) -> None:
            total += np.where(step.alive, step.result.reward, 0.0)

        run_episodes(env, env.reset(), lambda state, docs: (act(state, docs), None), add)
        returns.append(total)
    return np.concatenate(returns)
