"""Synthetic problems with a known true value, for tests and benchmarks of the estimators.

A contextual bandit with uniform logging, and a 3-state, 2-action MDP with per-step termination whose value is
known exactly (finite-horizon dynamic programming, or a linear solve without a horizon).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


# ---------------------------------------------------------------------------------------------- bandit
@dataclass
class BanditProblem:
    context: np.ndarray  # (N,) context type
    q_true: np.ndarray  # (K, A) expected reward
    logged_action: np.ndarray  # (N,)
    logged_propensity: np.ndarray  # (N,)
    reward: np.ndarray  # (N,)
    target_probs: np.ndarray  # (N, A)
    true_value: float  # E_x sum_a pi(a|x) q(x, a) with x uniform over the K types
    sample_value: float  # the same average over the sampled contexts


def make_bandit_problem(n: int, seed: int, noise: float = 0.5, num_types: int = 5, num_actions: int = 4,
                        greedy: bool = False) -> BanditProblem:
    """Uniform logging over A actions; a fixed softmax (or greedy) target policy; Gaussian reward noise."""
    table_rng = np.random.default_rng(1234)  # the problem itself is fixed; `seed` draws the data
    q_true = table_rng.uniform(0.0, 1.0, size=(num_types, num_actions))
    logits = 3.0 * q_true
    policy = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)  # (K, A)
    if greedy:
        policy = np.eye(num_actions)[q_true.argmax(axis=1)]
    rng = np.random.default_rng(seed)
    context = rng.integers(0, num_types, size=n)
    action = rng.integers(0, num_actions, size=n)
    reward = q_true[context, action] + noise * rng.standard_normal(n)
    return BanditProblem(
        context, q_true, action, np.full(n, 1.0 / num_actions), reward, policy[context],
        true_value=float((policy * q_true).sum(axis=1).mean()),
        sample_value=float((policy[context] * q_true[context]).sum(axis=1).mean()),
    )


# ------------------------------------------------------------------------------ finite-horizon MDP
@dataclass
class TabularMDP:
    """S states, A actions, per-step termination; rewards r(s, a) + noise."""

    initial: np.ndarray  # (S,)
    transition: np.ndarray  # (S, A, S)
    reward: np.ndarray  # (S, A)
    end_probability: np.ndarray  # (S, A) the episode ends after this step
    gamma: float

    @property
    def num_states(self) -> int:
        return len(self.initial)


def make_mdp(gamma: float = 0.9) -> TabularMDP:
    rng = np.random.default_rng(7)
    num_states, num_actions = 3, 2
    transition = rng.dirichlet(np.ones(num_states), size=(num_states, num_actions))
    reward = rng.uniform(0.0, 1.0, size=(num_states, num_actions))
    end = np.full((num_states, num_actions), 0.2)
    return TabularMDP(np.array([0.6, 0.3, 0.1]), transition, reward, end, gamma)


def finite_horizon_q(mdp: TabularMDP, policy: np.ndarray, horizon: int) -> np.ndarray:
    """(H, S, A) exact Q_t of `policy` (S, A) by backward dynamic programming; V_H = 0."""
    q = np.zeros((horizon, *mdp.reward.shape))
    v_next = np.zeros(mdp.num_states)
    for t in reversed(range(horizon)):
        q[t] = mdp.reward + mdp.gamma * (1 - mdp.end_probability) * (mdp.transition @ v_next)
        v_next = (policy * q[t]).sum(axis=1)
    return q


def stationary_q(mdp: TabularMDP, policy: np.ndarray) -> np.ndarray:
    """(S, A) exact Q of `policy` with no horizon: solve Q = r + gamma (1 - p_end) P pi Q."""
    s, a = mdp.reward.shape
    continue_p = (mdp.gamma * (1 - mdp.end_probability))[..., None] * mdp.transition  # (S, A, S')
    next_pair = continue_p[..., None] * policy[None, None]  # (S, A, S', A')
    return np.linalg.solve(np.eye(s * a) - next_pair.reshape(s * a, s * a), mdp.reward.ravel()).reshape(s, a)


@dataclass
class Episodes:
    """Flat per-step arrays of simulated episodes, rows in random order (as a table would give them)."""

    episode_key: np.ndarray
    sequence_number: np.ndarray
    step: np.ndarray  # ordinal step t
    state: np.ndarray
    action: np.ndarray
    propensity: np.ndarray
    reward: np.ndarray
    next_state: np.ndarray
    not_terminal: np.ndarray


def simulate(mdp: TabularMDP, policy: np.ndarray, num_episodes: int, horizon: int, seed: int,
             reward_noise: float = 0.1) -> Episodes:
    """Run `policy` (S, A) for up to `horizon` steps, vectorized over episodes."""
    rng = np.random.default_rng(seed)
    state = rng.choice(mdp.num_states, size=num_episodes, p=mdp.initial)
    alive = np.ones(num_episodes, dtype=bool)
    rows: list[dict[str, np.ndarray]] = []
    for t in range(horizon):
        idx = np.flatnonzero(alive)
        s = state[idx]
        cdf = policy[s].cumsum(axis=1)
        a = (rng.random(len(idx))[:, None] > cdf).sum(axis=1)
        reward = mdp.reward[s, a] + reward_noise * rng.standard_normal(len(idx))
        ends = (rng.random(len(idx)) < mdp.end_probability[s, a]) | (t == horizon - 1)
        next_cdf = mdp.transition[s, a].cumsum(axis=1)
        s_next = (rng.random(len(idx))[:, None] > next_cdf).sum(axis=1)
        rows.append({"episode_key": idx * 7 + 3, "sequence_number": np.full(len(idx), 10 * t + 5),
                     "step": np.full(len(idx), t), "state": s, "action": a, "propensity": policy[s, a],
                     "reward": reward, "next_state": s_next, "not_terminal": ~ends})
        state[idx] = s_next
        alive[idx[ends]] = False
    flat = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    order = rng.permutation(len(flat["step"]))
    return Episodes(**{k: v[order] for k, v in flat.items()})


LOGGING_POLICY = np.array([[0.5, 0.5], [0.6, 0.4], [0.3, 0.7]])
TARGET_POLICY = np.array([[0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
