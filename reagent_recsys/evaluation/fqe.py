"""Fitted Q evaluation (Le, Voloshin & Yue 2019) and the one-step reward model, as small torch MLPs.

FQE iterates Q_k(s, a) <- r + gamma^n * not_terminal * sum_a' pi(a'|s') Q_{k-1}(s', a') on logged transitions:
each iteration freezes a copy of the network, computes the targets with it, and regresses the network on them
for `epochs` passes (warm-started). After K iterations Q covers about K steps of the future. With gamma = 0
(one iteration) it is a reward model q(x, a) = E[r | x, a], which `fit_reward_model` provides.

Transitions must be ONE step: with n-step transitions (s_t, s_{t+n}) the target sum_{k<n} gamma^k r_{t+k} follows
the LOGGED actions for k >= 1, so FQE would value the logging policy. `next_step_index` rebuilds 1-step
transitions from a table holding every logged step.

Model uncertainty: `refit_on_resamples` refits a model on bootstrap resamples of whole training episodes (warm
started from the main fit via ``init``); the spread of the estimates across refits is the model's fitting error.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from reagent_recsys.evaluation.bootstrap import EvaluationDataError, check_rows
from reagent_recsys.evaluation.history import StateLayout


class QNetwork(nn.Module):
    """MLP state -> Q(s, .) with its input standardization and reward scale baked in (so it is self-contained).

    Two shapes. Per action (``layout`` None or without candidate features): one MLP state -> A outputs.
    Per candidate (``layout.candidate_columns``, the state columns of each action's candidate features): one MLP
    (context, the action's candidate features) -> Q shared by every action, as in a parametric DQN; candidate
    features are standardized with statistics pooled over the slots, so the same value means the same thing in
    every slot. It learns how Q depends on a candidate from all A slots' data at once, which matters where the
    target policy picks extreme candidates the uniform logger rarely took in any one slot.
    """

    def __init__(self, state_mean: np.ndarray, state_std: np.ndarray, reward_scale: float,
                 num_actions: int, hidden_sizes: Sequence[int], layout: StateLayout | None = None) -> None:
        super().__init__()
        self.register_buffer("state_mean", torch.as_tensor(state_mean, dtype=torch.float32))
        self.register_buffer("state_std", torch.as_tensor(state_std, dtype=torch.float32))
        self.register_buffer("reward_scale", torch.tensor(float(reward_scale)))
        self.per_candidate = layout is not None and layout.candidate_columns is not None
        if self.per_candidate:
            self.register_buffer("context_columns", torch.as_tensor(layout.context_columns))
            self.register_buffer("candidate_columns", torch.as_tensor(layout.candidate_columns))  # (D, A)
        layers: list[nn.Module] = []
        width = len(layout.context_columns) + len(layout.candidate_columns) if self.per_candidate else len(state_mean)
        for hidden in hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, 1 if self.per_candidate else num_actions))
        self.mlp = nn.Sequential(*layers)

    def scaled(self, state: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B, A) Q in units of reward_scale (what is trained)."""
        z = (state - self.state_mean) / self.state_std
        if not self.per_candidate:
            return self.mlp(z)
        context = z[:, self.context_columns]  # (B, U)
        candidates = z[:, self.candidate_columns].transpose(1, 2)  # (B, A, D)
        inputs = torch.cat([context[:, None, :].expand(-1, candidates.shape[1], -1), candidates], dim=2)
        return self.mlp(inputs)[..., 0]

    def scaled_at(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """(B, F), (B,) -> (B,) Q(s, a) in units of reward_scale, evaluating only the given actions."""
        if not self.per_candidate:
            return self.scaled(state).gather(1, action[:, None])[:, 0]
        z = (state - self.state_mean) / self.state_std
        chosen = z.gather(1, self.candidate_columns[:, action].T)  # (B, D)
        return self.mlp(torch.cat([z[:, self.context_columns], chosen], dim=1))[:, 0]

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B, A) Q in reward units."""
        return self.scaled(state) * self.reward_scale


@dataclass
class FittedQ:
    """A fitted Q (or reward) model and its training trace."""

    network: QNetwork
    gamma: float
    losses: list[float] = field(default_factory=list)  # mean regression loss per iteration (scaled units)

    @torch.no_grad()
    def q_values(self, state: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """(N, F) states -> (N, A) Q-values (numpy, float64)."""
        self.network.eval()
        state_t = torch.as_tensor(np.asarray(state), dtype=torch.float32)
        chunks = [self.network(state_t[i:i + batch_size]) for i in range(0, len(state_t), batch_size)]
        return torch.cat(chunks).double().numpy()

    def values(self, state: np.ndarray, target_probs: np.ndarray) -> np.ndarray:
        """(N,) V(s) = sum_a pi(a|s) Q(s, a)."""
        return (self.q_values(state) * target_probs).sum(axis=1)


def fqe_settings(config, seed: int = 0) -> dict[str, Any]:
    """fit_fqe's keyword settings from an ``EvaluationConfig``: ``fit_fqe(..., **fqe_settings(cfg, seed))``."""
    return {"iterations": config.fqe_iterations, "epochs": config.fqe_epochs,
            "hidden_sizes": tuple(config.fqe_hidden_sizes), "learning_rate": config.fqe_learning_rate,
            "batch_size": config.fqe_batch_size, "seed": seed}


def fit_fqe(
    state: np.ndarray,  # (N, F)
    action: np.ndarray,  # (N,) int
    reward: np.ndarray,  # (N,) reward (n-step discounted reward for n-step transitions)
    next_state: np.ndarray,  # (N, F); ignored where not_terminal is false
    not_terminal: np.ndarray,  # (N,) bool
    next_target_probs: np.ndarray,  # (N, A) pi(. | s'), restricted to the possible next actions
    gamma: float,
    *,
    n_steps: np.ndarray | None = None,  # (N,) steps between s and s' (discount gamma^n); None: 1
    iterations: int = 30,
    epochs: int = 2,
    hidden_sizes: Sequence[int] = (64, 64),
    learning_rate: float = 1e-3,
    batch_size: int = 512,
    seed: int = 0,
    num_threads: int | None = 1,
    init: FittedQ | None = None,
    layout: StateLayout | None = None,
) -> FittedQ:
    """Fit Q^pi by fitted Q evaluation on logged transitions; same seed, same model.

    init: warm start from this fitted model (its weights, input standardization and reward scale; then
    `hidden_sizes` and `layout` are ignored). Used for bootstrap refits, which then need fewer iterations.
    layout: with candidate columns, a per-candidate network (`QNetwork`); None: one output per action.
    num_threads: torch intra-op threads while fitting (restored after); these small MLPs run several times
    faster on 1 thread than on 2 busy cores. None keeps torch's setting.
    """
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _fit_fqe(state, action, reward, next_state, not_terminal, next_target_probs, gamma, n_steps,
                        iterations, epochs, hidden_sizes, learning_rate, batch_size, seed, init, layout)
    finally:
        torch.set_num_threads(previous_threads)


def _fit_fqe(state, action, reward, next_state, not_terminal, next_target_probs, gamma, n_steps,
             iterations, epochs, hidden_sizes, learning_rate, batch_size, seed, init, layout) -> FittedQ:
    state, next_state = np.asarray(state, np.float32), np.asarray(next_state, np.float32)
    action, reward = np.asarray(action, np.int64), np.asarray(reward, np.float64)
    not_terminal = np.asarray(not_terminal).astype(bool)
    next_target_probs = np.asarray(next_target_probs, np.float64)
    n, num_actions = next_target_probs.shape
    _check_transitions(state, action, reward, next_state, not_terminal, next_target_probs, n, num_actions)
    if not 0 <= gamma <= 1:
        raise EvaluationDataError(f"gamma must be in [0, 1], got {gamma}")
    discount = gamma ** (np.ones(n) if n_steps is None else np.asarray(n_steps, np.float64))  # (N,)
    discount = np.where(not_terminal, discount, 0.0)
    # Terminal rows may hold anything (NaN) in s' and pi(.|s'): zero them, since 0 * NaN is NaN.
    next_state = np.where(not_terminal[:, None], next_state, 0.0).astype(np.float32)
    next_target_probs = np.where(not_terminal[:, None], next_target_probs, 0.0)

    mean, std = state.mean(axis=0), state.std(axis=0)
    if layout is not None and layout.candidate_columns is not None:  # pool each candidate feature over the slots
        for columns in layout.candidate_columns:  # (A,) one candidate feature
            mean[columns], std[columns] = state[:, columns].mean(), state[:, columns].std()
    reward_std = float(reward.std())
    reward_scale = reward_std if reward_std > 1e-8 else 1.0  # Q is trained in units of the reward's spread
    if init is not None:
        net = copy.deepcopy(init.network)
        reward_scale = float(net.reward_scale)  # keep the main fit's units so its weights stay meaningful
    else:
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global torch RNG
            torch.manual_seed(seed)
            net = QNetwork(mean, np.where(std > 1e-6, std, 1.0), reward_scale, num_actions, hidden_sizes, layout)
    optimizer = torch.optim.Adam(net.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)

    s, s_next = torch.from_numpy(state), torch.from_numpy(next_state)
    a = torch.from_numpy(action)
    r_scaled = torch.from_numpy(reward / reward_scale).float()  # (N,)
    disc = torch.from_numpy(discount).float()  # (N,)
    pi_next = torch.from_numpy(next_target_probs).float()  # (N, A)
    # A deterministic target (terminal rows are all 0) needs Q(s', a') at its one action only.
    deterministic = bool(((next_target_probs == 0) | (next_target_probs == 1)).all())
    greedy_next = pi_next.argmax(dim=1)  # (N,)
    losses = []
    for _ in range(iterations):
        target_net = copy.deepcopy(net).eval()
        with torch.no_grad():
            v_next = torch.cat([
                target_net.scaled_at(s_next[rows], greedy_next[rows]) if deterministic
                else (target_net.scaled(s_next[rows]) * pi_next[rows]).sum(1)
                for rows in torch.arange(n).split(65536)])  # (N,) V(s') = sum_a' pi(a'|s') Q(s', a')
            td_target = r_scaled + disc * v_next  # (N,)
        net.train()
        total, steps = 0.0, 0
        for _ in range(epochs):
            for batch in torch.randperm(n, generator=generator).split(batch_size):
                q_taken = net.scaled_at(s[batch], a[batch])  # (B,)
                loss = nn.functional.mse_loss(q_taken, td_target[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total, steps = total + loss.item(), steps + 1
        losses.append(total / steps)
    return FittedQ(net.eval(), gamma, losses)


def fit_reward_model(
    state: np.ndarray,  # (N, F)
    action: np.ndarray,  # (N,) int
    reward: np.ndarray,  # (N,)
    num_actions: int,
    *,
    epochs: int = 20,
    hidden_sizes: Sequence[int] = (64, 64),
    learning_rate: float = 1e-3,
    batch_size: int = 512,
    seed: int = 0,
    num_threads: int | None = 1,
    init: FittedQ | None = None,
    layout: StateLayout | None = None,
) -> FittedQ:
    """q(x, a) = E[r | x, a] for DM/DR: FQE with gamma = 0 and a single iteration (`init`: warm start)."""
    state = np.asarray(state, np.float32)
    n = len(state)
    return fit_fqe(
        state, action, reward, state, np.zeros(n, bool), np.full((n, num_actions), 1.0 / num_actions), 0.0,
        iterations=1, epochs=epochs, hidden_sizes=hidden_sizes, learning_rate=learning_rate,
        batch_size=batch_size, seed=seed, num_threads=num_threads, init=init, layout=layout,
    )


def next_step_index(episode_key: np.ndarray, sequence_number: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """1-step transitions from a table holding every logged step: (N,) next-row index and (N,) not_terminal.

    Row i's next state is the state of the row with the same key and the next larger sequence_number
    (gaps allowed); the episode's last row is terminal (its index points to itself). Rows may come in any order.
    """
    key, seq = np.asarray(episode_key), np.asarray(sequence_number)
    if key.ndim != 1 or seq.shape != key.shape:
        raise EvaluationDataError(f"episode_key and sequence_number must be equal-length 1-d arrays, "
                                  f"got shapes {key.shape} and {seq.shape}")
    order = np.lexsort((seq, key))  # (N,)
    same = key[order][1:] == key[order][:-1]  # (N-1,) row k and k+1 (sorted) share an episode
    dup = same & (seq[order][1:] == seq[order][:-1])
    if dup.any():
        rows = order[np.flatnonzero(dup)[:5]]
        raise EvaluationDataError(f"unique (mdp_key, sequence_number): {int(dup.sum())} duplicate steps, "
                                  f"e.g. keys {key[rows].tolist()} at sequence_number {seq[rows].tolist()}")
    live_sorted = np.r_[same, False]  # (N,)
    next_sorted = np.where(live_sorted, np.r_[order[1:], order[-1:]], order)  # (N,)
    next_index, not_terminal = np.empty_like(order), np.empty(len(order), dtype=bool)
    next_index[order], not_terminal[order] = next_sorted, live_sorted
    return next_index, not_terminal


def resample_groups(group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Row indices of one bootstrap resample of whole groups (episodes): draw groups with replacement."""
    _, inverse = np.unique(np.asarray(group), return_inverse=True)  # (N,) group index of each row
    order = np.argsort(inverse, kind="stable")  # rows grouped
    sizes = np.bincount(inverse)  # (G,)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]  # (G,)
    drawn = rng.integers(0, len(sizes), size=len(sizes))  # (G,) drawn groups
    lengths = sizes[drawn]
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # position in group
    return order[np.repeat(starts[drawn], lengths) + offsets]


def refit_on_resamples(fit: Callable[[np.ndarray, int], FittedQ], group: np.ndarray, count: int,
                       seed: int = 0) -> list[FittedQ]:
    """`count` models, each `fit(rows, seed_k)` on a bootstrap resample of whole groups (episodes) of the rows.

    Deterministic per (group, count, seed). Each refit also gets its own seed (its own SGD noise).
    """
    rng = np.random.default_rng([seed, 7])
    return [fit(resample_groups(group, rng), seed + 1000 * (k + 1)) for k in range(count)]


def _check_transitions(state, action, reward, next_state, not_terminal, next_target_probs, n, num_actions) -> None:
    for name, value, shape in (("state", state, (n, state.shape[-1])), ("next_state", next_state, state.shape),
                               ("action", action, (n,)), ("reward", reward, (n,)),
                               ("not_terminal", not_terminal, (n,))):
        if value.shape != shape or state.ndim != 2:
            raise EvaluationDataError(f"{name} must have shape {shape} (N from next_target_probs), got {value.shape}")
    check_rows("action index in [0, A)", "action", (action < 0) | (action >= num_actions), action)
    check_rows("finite reward", "reward", ~np.isfinite(reward), reward)
    check_rows("finite state", "state", ~np.isfinite(state))
    live = not_terminal[:, None]
    check_rows("finite next state where not terminal", "next_state", live & ~np.isfinite(next_state))
    probs_ok = np.isfinite(next_target_probs) & (next_target_probs >= 0)
    check_rows("probabilities finite and >= 0 where not terminal", "next_target_probs", live & ~probs_ok)
    sums = np.where(not_terminal, np.nan_to_num(next_target_probs).sum(axis=1), 1.0)
    check_rows("probabilities sum to 1 where not terminal", "next_target_probs", np.abs(sums - 1) > 1e-4, sums)
