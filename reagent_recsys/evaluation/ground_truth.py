"""Simulator ground truth: run policies (the served TorchScript one and baselines) in the simulator.

Every policy is wrapped as an ``Actor``: ``act(state (B, F), doc_features, rng) -> (B,)`` candidate slots, called
once per step on a whole batch of users. The served policy sees the simulator's state columns mapped to its own
``feature_ids`` BY ID (presence 0 for features the simulator does not have), and its action ``i`` is the candidate
slot ``int(action_names[i])``.

``simulate`` uses common random numbers: batch ``i`` of a run seeded ``seed`` always draws the same users and
documents, whatever the policy, so differences between policies are measured with less noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from reagent_recsys.config import PipelineConfig
from reagent_recsys.envs.base import EnvFactory, EnvStep, run_episodes, slate_size_of
from reagent_recsys.envs.base import env_factory as env_factory  # re-exported: the one factory
from reagent_recsys.envs.lts import DOC_ID_BASE, RESPONSE_METRICS, SATISFACTION_ID, FeatureSpec, LTSParams
from reagent_recsys.history import numpy_history, spec_from_dict
from reagent_recsys.policies.logging import (
    GreedyPolicy,
    LoggingPolicy,
    MixturePolicy,
    RandomPolicy,
    build_policy,
    sample_categorical,
)
from reagent_recsys.policies.state import action_slots as action_slots  # re-exported: one definition
from reagent_recsys.policies.state import feature_columns as feature_columns
from reagent_recsys.policies.state import map_state as map_state

DocFeatures = Mapping[str, np.ndarray]  # name -> (B, N)
Z95 = 1.959963984540054


# ------------------------------------------------------------------------------------------- actors
class Actor:
    """A policy acting on a batch of users; `begin_episodes` is called before each batch of episodes."""

    def begin_episodes(self, num_users: int, rng: np.random.Generator) -> None:
        """Start new episodes (stateless actors ignore this)."""

    def act(self, state: np.ndarray, doc_features: DocFeatures, rng: np.random.Generator) -> np.ndarray:
        """(B, F) state -> (B,) int64 candidate slots."""
        raise NotImplementedError

    def observe(self, step: EnvStep) -> None:
        """See the step just taken (its reward and response); stateless actors ignore this."""


class LoggingActor(Actor):
    """A logging policy (``reagent_recsys.policies``) as an actor; it reads document features only."""

    def __init__(self, policy: LoggingPolicy) -> None:
        self.policy = policy

    def begin_episodes(self, num_users: int, rng: np.random.Generator) -> None:
        self.policy.begin_episodes(num_users, rng)

    def act(self, state: np.ndarray, doc_features: DocFeatures, rng: np.random.Generator) -> np.ndarray:
        slates, _ = self.policy.act(doc_features, rng, state)  # (B, S)
        return slates[:, 0]


class SimulatedHistory:
    """A policy's history features (its export's "history" block) for simulated users: each step's source
    values read as the timeline reads them from the logged row (state and candidate features as the float32
    state holds them; reward and the click/engagement/satisfaction metrics of the response; the action is the
    chosen slot), then `history.numpy_history` over each user's steps so far (episodes are short)."""

    def __init__(self, block: Mapping[str, Any], feature_ids: Sequence[int], env_features: Sequence[FeatureSpec],
                 num_candidates: int) -> None:
        self.spec, ids = spec_from_dict(block)
        where = {int(f): i for i, f in enumerate(feature_ids)}
        if any(int(i) not in where for i in ids):
            raise ValueError(f"history ids {ids[:5]}...: not all among the policy's feature_ids")
        self.columns = np.array([where[int(i)] for i in ids], dtype=np.int64)  # (H,) in the policy's state
        env_column = {f.name: i for i, f in enumerate(env_features)}
        self.reads: list[tuple[str, Any]] = []  # per source: how to read x from a step
        for source in self.spec.sources:
            kind, _, name = source.partition(".")
            if kind == "state" and name in env_column:
                self.reads.append(("state", env_column[name]))
            elif kind == "candidate":
                per_slot = {f.slot: i for i, f in enumerate(env_features) if f.slot is not None
                            and f.name.split(".", 1)[-1] == name}
                if sorted(per_slot) != list(range(num_candidates)):
                    raise ValueError(f"history source {source!r}: the simulator's candidates have no feature {name!r}")
                self.reads.append(("candidate", np.array([per_slot[k] for k in range(num_candidates)])))
            elif kind == "action" and name.isdigit():
                self.reads.append(("action", int(name)))
            elif kind in ("reward", "step") or (kind == "metric" and name in RESPONSE_METRICS):
                self.reads.append((kind, name))
            else:
                raise ValueError(f"history source {source!r}: the simulator cannot provide it")
        self.begin_episodes()

    def begin_episodes(self) -> None:
        self.steps: list[np.ndarray] = []  # (B, S) per step taken
        self._decision: np.ndarray | None = None  # (B, S) of the step being taken, until its response

    def features(self, num_users: int) -> np.ndarray:
        """(B, H) float32: the history features of the users' next step."""
        steps = len(self.steps)
        x = np.concatenate([*self.steps, np.zeros((num_users, len(self.spec.sources)))])  # step-major, + the next
        key, seq = np.tile(np.arange(num_users), steps + 1), np.repeat(np.arange(steps + 1), num_users)
        return numpy_history(key, seq, x, self.spec)[steps * num_users:]

    def decide(self, state: np.ndarray, slots: np.ndarray) -> None:
        """Record the decision-time values of the step: `slots` (B,) were chosen in `state` (B, F)."""
        rows = np.arange(len(state))
        x = np.full((len(state), len(self.spec.sources)), np.nan)
        for j, (kind, where) in enumerate(self.reads):
            if kind == "state":
                x[:, j] = state[:, where]
            elif kind == "candidate":
                x[:, j] = state[rows, where[slots]]
            elif kind == "action":
                x[:, j] = slots == where
            elif kind == "step":
                x[:, j] = 1.0
        self._decision = x

    def observe(self, step: EnvStep) -> None:
        """Complete the step with its response (reward, metrics) and append it."""
        x = self._decision
        for j, (kind, name) in enumerate(self.reads):
            if kind in ("reward", "metric"):
                x[:, j] = np.asarray(getattr(step.result, "reward" if kind == "reward" else name), np.float64)
        self.steps.append(x)


class ServedPolicyActor(Actor):
    """A policy with the exported signature ``policy(state, presence, possible_actions_mask) -> dict``.

    greedy: take ``out["action"]`` (what a greedy server does); else sample from ``out["action_probabilities"]``.
    history: the export's history block; the policy then also sees its history features (`SimulatedHistory`),
    as a server keeping per-session state would compute them.
    """

    def __init__(self, policy: Callable[..., dict[str, torch.Tensor]], feature_ids: Sequence[int],
                 action_names: Sequence[str], env_features: Sequence[FeatureSpec], num_candidates: int,
                 greedy: bool, history: Mapping[str, Any] | None = None) -> None:
        self.policy = policy
        self.greedy = greedy
        self.index, self.present = feature_columns(feature_ids, [f.id for f in env_features])
        self.slots = action_slots(action_names, num_candidates)  # (A,)
        self.possible = torch.from_numpy(self.slots >= 0)  # (A,)
        self.history = SimulatedHistory(history, feature_ids, env_features, num_candidates) if history else None

    def begin_episodes(self, num_users: int, rng: np.random.Generator) -> None:
        if self.history is not None:
            self.history.begin_episodes()

    @torch.no_grad()
    def act(self, state: np.ndarray, doc_features: DocFeatures, rng: np.random.Generator) -> np.ndarray:
        mapped, presence = map_state(state, self.index, self.present)  # (B, Fp)
        if self.history is not None:
            mapped[:, self.history.columns] = self.history.features(len(state))
            presence[:, self.history.columns] = 1.0
        mask = self.possible[None, :].expand(len(state), -1)  # (B, A)
        out = self.policy(torch.from_numpy(mapped), torch.from_numpy(presence), mask)
        if self.greedy:
            actions = out["action"].numpy()  # (B,)
        else:
            actions = sample_categorical(out["action_probabilities"].double().numpy(), rng)
        slots = self.slots[actions]
        if self.history is not None:
            self.history.decide(state, slots)
        return slots

    def observe(self, step: EnvStep) -> None:
        if self.history is not None:
            self.history.observe(step)


# ------------------------------------------------------------------------------------- simulation
def simulate(make: EnvFactory, actor: Actor, num_episodes: int, seed: int, batch_size: int = 4096,
             gamma: float = 1.0) -> np.ndarray:
    """(num_episodes,) discounted returns sum_t gamma^t r_t of `actor`; batch i uses rngs derived from (seed, i)."""
    if num_episodes < 1 or batch_size < 1:
        raise ValueError(f"num_episodes and batch_size must be >= 1, got {num_episodes}, {batch_size}")
    returns = []
    for i, start in enumerate(range(0, num_episodes, batch_size)):
        env_rng = np.random.default_rng([seed, i, 0])
        policy_rng = np.random.default_rng([seed, i, 1])
        env = make(min(batch_size, num_episodes - start), env_rng)
        state = env.reset()
        actor.begin_episodes(env.num_users, policy_rng)
        total = np.zeros(env.num_users)  # (B,)
        cycle = np.arange(slate_size_of(env))  # (S,): the slate is the chosen slot and the next S-1 (cyclic)

        def act(state: np.ndarray, docs: DocFeatures, env: Any = env, cycle: np.ndarray = cycle,
                rng: np.random.Generator = policy_rng) -> tuple[np.ndarray, None]:
            return (actor.act(state, docs, rng)[:, None] + cycle) % env.num_actions, None

        def add(step: EnvStep, total: np.ndarray = total) -> None:
            actor.observe(step)
            total += np.where(step.alive, gamma ** step.t * np.asarray(step.result.reward, dtype=np.float64), 0.0)

        run_episodes(env, state, act, add)
        returns.append(total)
    return np.concatenate(returns)


@dataclass(frozen=True)
class GroundTruth:
    """A policy's true mean return in the simulator with a normal 95% interval (mean +- 1.96 SE)."""

    name: str
    mean: float
    stderr: float
    lower: float
    upper: float
    episodes: int

    @classmethod
    def from_returns(cls, name: str, returns: np.ndarray) -> GroundTruth:
        returns = np.asarray(returns, dtype=np.float64)
        mean = float(returns.mean())
        stderr = float(returns.std(ddof=1) / math.sqrt(len(returns))) if len(returns) > 1 else math.nan
        return cls(name, mean, stderr, mean - Z95 * stderr, mean + Z95 * stderr, len(returns))

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def baseline_actors(config: PipelineConfig, doc_feature_names: Sequence[str], slate_size: int = 1,
                    state_ids: Sequence[int] = ()) -> dict[str, Actor]:
    """The logging policy of `config`, random, and (when the env has `clickbait`) always-sweetest/bitterest;
    `state_ids` are the env state's feature ids (needed by a logging policy that reads the state)."""
    logging_policy = build_policy(config.logging.policy, slate_size=slate_size)
    logging_policy.check_features(doc_feature_names)
    logging_policy.bind_state(state_ids)
    actors: dict[str, Actor] = {"logging": LoggingActor(logging_policy),
                                "random": LoggingActor(RandomPolicy(slate_size))}
    if "clickbait" in doc_feature_names:
        actors["always_sweetest"] = LoggingActor(GreedyPolicy("clickbait", "max", slate_size))
        actors["always_bitterest"] = LoggingActor(GreedyPolicy("clickbait", "min", slate_size))
    return actors


def ground_truth_table(make: EnvFactory, actors: Mapping[str, Actor], num_episodes: int, seed: int,
                       batch_size: int = 4096, gamma: float = 1.0) -> list[GroundTruth]:
    """Each actor's true mean (discounted) return over the same simulated users (common random numbers)."""
    return [GroundTruth.from_returns(name, simulate(make, actor, num_episodes, seed, batch_size, gamma))
            for name, actor in actors.items()]


# --------------------------------------------------------------------------- logged-context views
def document_columns(feature_ids: Sequence[int], env_features: Sequence[FeatureSpec], num_candidates: int
                     ) -> dict[str, np.ndarray] | None:
    """{doc feature name: (N,) state column of each candidate slot}, or None when a slot's feature is not logged."""
    where = {int(f): i for i, f in enumerate(feature_ids)}
    columns: dict[str, np.ndarray] = {}
    for spec in env_features:
        if spec.kind != "document" or spec.slot is None:
            continue
        name = spec.name.split(".", 1)[1]
        columns.setdefault(name, np.full(num_candidates, -1, dtype=np.int64))[spec.slot] = where.get(spec.id, -1)
    if not columns or any((cols < 0).any() for cols in columns.values()):
        return None
    return columns


def logging_probabilities(policy: LoggingPolicy, state: np.ndarray, doc_columns: Mapping[str, np.ndarray],
                          slots: np.ndarray, state_ids: Sequence[int] | None = None) -> np.ndarray | None:
    """(N, A) probabilities the logging policy gives each action on logged states (columns `state_ids`, needed by
    a policy that reads the state); None if history-dependent."""
    if isinstance(policy, MixturePolicy):
        return None
    if state_ids is not None:
        policy.bind_state(state_ids)
    docs = {name: state[:, cols].astype(np.float64) for name, cols in doc_columns.items()}  # (N, C) each
    probs = policy.probabilities(docs, state)  # (N, C) over candidate slots
    return np.where(slots[None, :] >= 0, probs[:, np.maximum(slots, 0)], 0.0)  # (N, A)


def one_step_truth(state: np.ndarray, feature_ids: Sequence[int], target_probs: np.ndarray,
                   action_names: Sequence[str], params: LTSParams) -> tuple[np.ndarray | None, str]:
    """(N,) true E_pi[r | s] on logged states, or (None, why not).

    E[r | s, a] = exp(mu + sigma^2 / 2), mu = (c choc_mean + (1 - c) kale_mean) satisfaction,
    sigma = c choc_stddev + (1 - c) kale_stddev, c the clickbait of the chosen candidate: computable only when
    the satisfaction (feature 0) and every candidate's clickbait (100 + slot) are in the state.
    """
    where = {int(f): i for i, f in enumerate(feature_ids)}
    if SATISFACTION_ID not in where:
        return None, "satisfaction is latent (feature 0 not in the state): E[r | s, a] is not a function of s"
    slots = action_slots(action_names, params.num_candidates)
    missing = [s for s in slots if s >= 0 and DOC_ID_BASE + s not in where]
    if missing:
        return None, f"clickbait of candidate slots {missing[:5]} is not in the state"
    sat = state[:, where[SATISFACTION_ID]].astype(np.float64)[:, None]  # (N, 1)
    c = state[:, [where[DOC_ID_BASE + max(s, 0)] for s in slots]].astype(np.float64)  # (N, A)
    mu = (c * params.choc_mean + (1.0 - c) * params.kale_mean) * sat
    sigma = c * params.choc_stddev + (1.0 - c) * params.kale_stddev
    expected = np.where(slots[None, :] >= 0, np.exp(mu + sigma ** 2 / 2.0), 0.0)  # (N, A)
    return (np.asarray(target_probs, dtype=np.float64) * expected).sum(axis=1), "exact"
