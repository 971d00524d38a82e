"""Logging policies: the behaviour policies whose decisions fill the mdp table.

Every policy works on a batch of B users facing N candidate documents, described by document features
(``{"clickbait": (B, N)}``). ``act`` returns a slate per user and the EXACT probability the policy gave the
logged action, the first slate item (the user only looks at the first item; the rest of the slate is the next
``slate_size - 1`` slots in cyclic order and does not change the probability).

History-dependent policies (the per-episode mixture) carry state per user: call ``begin_episodes`` at the start
of every batch of episodes, then ``act`` once per step.

Policies that read the whole state (the ``exported`` TorchScript policy) also take the (B, F) ``state`` whose
column ids were given once by ``bind_state`` (the simulator's feature ids, i.e. the mdp table's state_features).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from reagent_recsys.config import (
    ConfigError,
    EpsilonGreedyPolicyConfig,
    ExportedPolicyConfig,
    GreedyPolicyConfig,
    MixturePolicyConfig,
    PolicyConfig,
    RandomPolicyConfig,
    SoftmaxPolicyConfig,
)
from reagent_recsys.policies.state import action_slots, feature_columns, map_state
from reagent_recsys.serving.exploration import action_probabilities
from reagent_recsys.serving.exploration import sample as sample_served

DocFeatures = Mapping[str, np.ndarray]  # name -> (B, N)


def sample_categorical(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of `probs` (B, N) by inverse CDF; never returns a zero-probability index."""
    cdf = np.cumsum(probs, axis=1)  # (B, N)
    u = rng.random(len(probs)) * cdf[:, -1]  # (B,), strictly below the row total
    return (cdf <= u[:, None]).sum(axis=1).astype(np.int64)  # (B,)


class LoggingPolicy:
    """Base class: subclasses define `probabilities` and may override `sample` (faster exact draws)."""

    def __init__(self, slate_size: int = 1, field: str = "logging.policy") -> None:
        self.slate_size = slate_size
        self.field = field  # dotted config path, for error messages

    def required_features(self) -> dict[str, str]:
        """Document features this policy reads, mapped to the dotted config field that names them."""
        return {}

    def check_features(self, available: Iterable[str]) -> None:
        """Raise ConfigError naming the config field if the env lacks a document feature this policy needs."""
        available = sorted(available)
        for name, field in self.required_features().items():
            if name not in available:
                raise ConfigError(
                    f"{field}: the env has no document feature {name!r} (available: {', '.join(available) or 'none'})"
                )

    def bind_state(self, feature_ids: Sequence[int]) -> None:
        """The feature id of each column of the `state` later passed to `probabilities` / `act` (policies that
        read document features only ignore it)."""

    def begin_episodes(self, num_users: int, rng: np.random.Generator) -> None:
        """Start a new episode for each of `num_users` users (stateless policies ignore this)."""

    def probabilities(self, doc_features: DocFeatures, state: np.ndarray | None = None) -> np.ndarray:
        """(B, N) probability of each candidate as the first slate item, given the history so far (and the (B, F)
        `state`, for the policies that read it)."""
        raise NotImplementedError

    def sample(self, doc_features: DocFeatures, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(B,) actions drawn from this policy (`probs` is `probabilities(doc_features)`)."""
        return sample_categorical(probs, rng)

    def observe(self, doc_features: DocFeatures, actions: np.ndarray) -> None:
        """Record the actions taken (history-dependent policies update their state)."""

    def episode_metrics(self) -> dict[str, np.ndarray]:
        """Per-user diagnostics fixed for the episode (e.g. the drawn mixture component), each (B,)."""
        return {}

    def act(self, doc_features: DocFeatures, rng: np.random.Generator,
            state: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Slates (B, S) int64 and the propensity (B,) float64 of the first item."""
        probs = self.probabilities(doc_features, state)  # (B, N)
        actions = self.sample(doc_features, probs, rng)  # (B,)
        propensity = probs[np.arange(len(actions)), actions].astype(np.float64)  # (B,)
        self.observe(doc_features, actions)
        num_candidates = probs.shape[1]
        slates = (actions[:, None] + np.arange(self.slate_size)) % num_candidates  # (B, S)
        return slates.astype(np.int64), propensity


def _num_candidates(doc_features: DocFeatures) -> tuple[int, int]:
    first = next(iter(doc_features.values()))
    return first.shape[0], first.shape[1]


class RandomPolicy(LoggingPolicy):
    """Uniform over the N candidates: propensity 1/N."""

    def probabilities(self, doc_features: DocFeatures, state: np.ndarray | None = None) -> np.ndarray:
        b, n = _num_candidates(doc_features)
        return np.full((b, n), 1.0 / n)

    def sample(self, doc_features: DocFeatures, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, probs.shape[1], size=probs.shape[0], dtype=np.int64)


class _ScorePolicy(LoggingPolicy):
    """A policy that scores candidates by one document feature, signed by direction (+1 max, -1 min)."""

    def __init__(self, feature: str, direction: str, slate_size: int = 1, field: str = "logging.policy") -> None:
        super().__init__(slate_size, field)
        self.feature = feature
        self.sign = 1.0 if direction == "max" else -1.0

    def required_features(self) -> dict[str, str]:
        return {self.feature: f"{self.field}.feature"}

    def scores(self, doc_features: DocFeatures) -> np.ndarray:
        return self.sign * np.asarray(doc_features[self.feature], dtype=np.float64)  # (B, N)


class GreedyPolicy(_ScorePolicy):
    """Always the candidate with the best score (ties: the lowest slot): propensity 1."""

    def greedy_actions(self, doc_features: DocFeatures) -> np.ndarray:
        return self.scores(doc_features).argmax(axis=1)  # (B,)

    def probabilities(self, doc_features: DocFeatures, state: np.ndarray | None = None) -> np.ndarray:
        b, n = _num_candidates(doc_features)
        probs = np.zeros((b, n))
        probs[np.arange(b), self.greedy_actions(doc_features)] = 1.0
        return probs

    def sample(self, doc_features: DocFeatures, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return probs.argmax(axis=1)


class SoftmaxPolicy(_ScorePolicy):
    """P(a) proportional to exp(score_a / temperature)."""

    def __init__(self, feature: str, direction: str, temperature: float, slate_size: int = 1,
                 field: str = "logging.policy") -> None:
        super().__init__(feature, direction, slate_size, field)
        self.temperature = temperature

    def probabilities(self, doc_features: DocFeatures, state: np.ndarray | None = None) -> np.ndarray:
        logits = self.scores(doc_features) / self.temperature  # (B, N)
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)


class EpsilonGreedyPolicy(LoggingPolicy):
    """With probability epsilon a uniform candidate, else the expert's: P(a) = eps/N + (1-eps)[a == expert]."""

    def __init__(self, epsilon: float, expert: GreedyPolicy, slate_size: int = 1,
                 field: str = "logging.policy") -> None:
        super().__init__(slate_size, field)
        self.epsilon = epsilon
        self.expert = expert

    def required_features(self) -> dict[str, str]:
        return self.expert.required_features()

    def probabilities(self, doc_features: DocFeatures, state: np.ndarray | None = None) -> np.ndarray:
        b, n = _num_candidates(doc_features)
        probs = np.full((b, n), self.epsilon / n)
        probs[np.arange(b), self.expert.greedy_actions(doc_features)] += 1.0 - self.epsilon
        return probs

    def sample(self, doc_features: DocFeatures, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b, n = probs.shape
        explore = rng.random(b) < self.epsilon
        uniform = rng.integers(0, n, size=b, dtype=np.int64)
        return np.where(explore, uniform, self.expert.greedy_actions(doc_features))


class ExportedLoggingPolicy(LoggingPolicy):
    """An exported TorchScript policy (workflow.export's policy.pt) served as `workflow.serve` serves it.

    It is loaded by the server's loader (`serving.policy.LoadedPolicy`), sees the simulator's state mapped to its
    feature ids (`policies.state.map_state`), and its probabilities are the server's
    (`serving.exploration.action_probabilities`: greedy, softmax(Q / temperature) or epsilon-greedy over the
    candidate slots), so the logged propensity is exactly the probability the server would give the action.
    """

    def __init__(self, path: str, exploration: str = "greedy", temperature: float = 1.0, epsilon: float = 0.1,
                 slate_size: int = 1, field: str = "logging.policy") -> None:
        super().__init__(slate_size, field)
        from reagent_recsys.serving.policy import LoadedPolicy  # torch: only when a run logs with one

        file = Path(path)
        if file.is_dir():
            file = file / "policy.pt"
        if not file.is_file():
            raise ConfigError(f"{field}.path: no exported policy at {str(file)!r} (a policy.pt file or an export "
                              "directory holding one, as workflow.export writes)")
        try:
            self.policy = LoadedPolicy(file)
        except Exception as exc:  # torch.jit.load's errors vary by version; all mean "not an exported policy"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{field}.path: {str(file)!r} is not an exported policy ({first})") from exc
        self.exploration, self.temperature, self.epsilon = exploration, temperature, epsilon
        self._columns: tuple[np.ndarray, np.ndarray] | None = None  # policy feature -> state column, present
        self._slots: dict[int, np.ndarray] = {}  # num candidates -> (A,) slot of each action (-1: none)

    def bind_state(self, feature_ids: Sequence[int]) -> None:
        index, present = feature_columns(self.policy.layout.feature_ids, feature_ids)
        if not present.all():  # served as absent they would silently differ from what it was trained on
            missing = [n for n, p in zip(self.policy.layout.feature_names, present, strict=True) if not p]
            raise ConfigError(f"{self.field}.path: the state has no feature {', '.join(missing[:5])}"
                              f"{' ...' if len(missing) > 5 else ''} ({len(missing)} of the policy's "
                              f"{len(present)} features; state ids {list(feature_ids)[:10]}): it was trained on "
                              "other data")
        self._columns = (index, present)

    def action_slots(self, num_candidates: int) -> np.ndarray:
        """(A,) candidate slot of each of the policy's actions (-1: not a slot here)."""
        if num_candidates not in self._slots:
            try:
                self._slots[num_candidates] = action_slots(self.policy.layout.action_names, num_candidates)
            except ValueError as exc:
                raise ConfigError(f"{self.field}.path: {exc}") from exc
        return self._slots[num_candidates]

    def probabilities(self, doc_features: DocFeatures, state: np.ndarray | None = None) -> np.ndarray:
        if state is None or self._columns is None:
            raise RuntimeError("ExportedLoggingPolicy: call bind_state, then pass the state to act / probabilities")
        b, n = _num_candidates(doc_features)
        slots = self.action_slots(n)  # (A,)
        values, presence = map_state(np.asarray(state), *self._columns)  # (B, F) float32 each
        mask = np.broadcast_to(slots >= 0, (b, len(slots))).copy()  # (B, A)
        q, greedy = self.policy.forward(values, presence, mask)
        by_action = action_probabilities(q, mask, greedy, self.exploration, self.temperature, self.epsilon)
        probs = np.zeros((b, n))
        probs[:, slots[slots >= 0]] = by_action[:, slots >= 0]
        return probs

    def sample(self, doc_features: DocFeatures, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return sample_served(probs, rng)[0]  # the server's draw


class MixturePolicy(LoggingPolicy):
    """Per-episode mixture: each episode draws component k with probability w_k and follows pi_k throughout.

    The component is latent, so the logging policy is history-dependent. The exact probability it gives the
    action a_t after the history h_t = (s_0, a_0, ..., s_t) is

        P(a_t | h_t) = sum_k P(k | h_t) pi_k(a_t | s_t),   P(k | h_t) proportional to w_k prod_{tau<t} pi_k(a_tau | s_tau).

    The product of these propensities over an episode telescopes to sum_k w_k prod_t pi_k(a_t | s_t), the true
    probability of the episode's action sequence, so importance weights built from the logged propensities are
    unbiased. Logging pi_k(a_t | s_t) of the drawn component instead would not be (the component is not observed).
    We keep per-user log-posteriors (K, B) and update them after each action (log-space: greedy components give
    exact zeros). The drawn component is reported by `episode_metrics()["policy_component"]` for diagnostics.
    """

    def __init__(self, weights: np.ndarray, components: list[LoggingPolicy], slate_size: int = 1,
                 field: str = "logging.policy") -> None:
        super().__init__(slate_size, field)
        self.weights = np.asarray(weights, dtype=np.float64) / np.sum(weights)
        self.components = components
        self._component: np.ndarray | None = None  # (B,) drawn component per user
        self._log_post: np.ndarray | None = None  # (K, B) unnormalized log P(k | history)
        self._component_probs: np.ndarray | None = None  # (K, B, N) cache for the current step

    def required_features(self) -> dict[str, str]:
        needed: dict[str, str] = {}
        for c in self.components:
            needed.update(c.required_features())
        return needed

    def bind_state(self, feature_ids: Sequence[int]) -> None:
        for c in self.components:
            c.bind_state(feature_ids)

    def begin_episodes(self, num_users: int, rng: np.random.Generator) -> None:
        self._component = rng.choice(len(self.components), size=num_users, p=self.weights).astype(np.int64)
        self._log_post = np.repeat(np.log(self.weights)[:, None], num_users, axis=1)  # (K, B)
        for c in self.components:
            c.begin_episodes(num_users, rng)

    def _posterior(self) -> np.ndarray:
        if self._log_post is None:
            raise RuntimeError("MixturePolicy: call begin_episodes before act")
        shifted = self._log_post - self._log_post.max(axis=0, keepdims=True)  # (K, B)
        post = np.exp(shifted)
        return post / post.sum(axis=0, keepdims=True)

    def probabilities(self, doc_features: DocFeatures, state: np.ndarray | None = None) -> np.ndarray:
        self._component_probs = np.stack([c.probabilities(doc_features, state) for c in self.components])  # (K, B, N)
        return np.einsum("kb,kbn->bn", self._posterior(), self._component_probs)  # (B, N)

    def sample(self, doc_features: DocFeatures, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        # Every component draws for every user (keeps nested mixtures' per-user state aligned); each user keeps
        # the draw of its own component. K is small, so this costs little.
        draws = np.stack([c.sample(doc_features, self._component_probs[k], rng)
                          for k, c in enumerate(self.components)])  # (K, B)
        return draws[self._component, np.arange(probs.shape[0])]

    def observe(self, doc_features: DocFeatures, actions: np.ndarray) -> None:
        chosen = self._component_probs[:, np.arange(len(actions)), actions]  # (K, B)
        with np.errstate(divide="ignore"):
            self._log_post = self._log_post + np.log(chosen)
        for c in self.components:
            c.observe(doc_features, actions)

    def episode_metrics(self) -> dict[str, np.ndarray]:
        return {"policy_component": self._component}


def build_policy(cfg: PolicyConfig, slate_size: int = 1, field: str = "logging.policy") -> LoggingPolicy:
    """The logging policy described by `cfg`; `field` is its dotted config path (used in error messages)."""
    if isinstance(cfg, RandomPolicyConfig):
        return RandomPolicy(slate_size, field)
    if isinstance(cfg, GreedyPolicyConfig):
        return GreedyPolicy(cfg.feature, cfg.direction, slate_size, field)
    if isinstance(cfg, SoftmaxPolicyConfig):
        return SoftmaxPolicy(cfg.feature, cfg.direction, cfg.temperature, slate_size, field)
    if isinstance(cfg, EpsilonGreedyPolicyConfig):
        expert = GreedyPolicy(cfg.expert.feature, cfg.expert.direction, slate_size, f"{field}.expert")
        return EpsilonGreedyPolicy(cfg.epsilon, expert, slate_size, field)
    if isinstance(cfg, ExportedPolicyConfig):
        return ExportedLoggingPolicy(cfg.path, cfg.exploration, cfg.temperature, cfg.epsilon, slate_size, field)
    if isinstance(cfg, MixturePolicyConfig):
        components = [
            build_policy(c.policy, slate_size, f"{field}.components[{i}].policy") for i, c in enumerate(cfg.components)
        ]
        return MixturePolicy(np.array([c.weight for c in cfg.components]), components, slate_size, field)
    raise ConfigError(f"{field}: unknown policy config {type(cfg).__name__}")
