"""Fitted Q evaluation (Le, Voloshin & Yue 2019) and the one-step reward model, as small torch MLPs.

FQE iterates Q_k(s, a) <- r + gamma^n * not_terminal * sum_a' pi(a'|s') Q_{k-1}(s', a') on logged transitions:
each iteration freezes a copy of the network, computes the targets with it, and regresses the network on them
for `epochs` passes (warm-started). After K iterations Q covers about K steps of the future. With gamma = 0
(one iteration) it is a reward model q(x, a) = E[r | x, a], which `fit_reward_model` provides.

Transitions must be ONE step: with n-step transitions (s_t, s_{t+n}) the target sum_{k<n} gamma^k r_{t+k} follows
the LOGGED actions for k >= 1, so FQE would value the logging policy. `next_step_index` rebuilds 1-step
transitions from a table holding every logged step.

Model uncertainty: a model is refit on bootstrap resamples of whole training episodes (`resample_groups`; from
scratch, or warm started from the main fit via ``init``); the spread of the estimates across fits is the model's
fitting error. `fit_fqe_ensemble` and `fit_reward_model_ensemble` train the main fit and its refits together as
one batched ensemble (`ensemble.StackedMLP`); `fit_fqe` and `fit_reward_model` are their one-member case.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from reagent_recsys.evaluation.bootstrap import EvaluationDataError, check_rows
from reagent_recsys.evaluation.ensemble import StackedAdam, StackedMLP, epoch_schedule
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
    def q_values(self, state: np.ndarray, needed: np.ndarray | None = None, batch_size: int = 65536) -> np.ndarray:
        """(N, F) states -> (N, A) Q-values (numpy, float64).

        needed: (N, A) bool, the pairs to evaluate (a per-candidate network then runs on those pairs only, ~10x
        fewer for a greedy target); the other entries are 0. None: every pair.
        """
        self.network.eval()
        state_t = torch.as_tensor(np.asarray(state), dtype=torch.float32)
        if needed is None or not self.network.per_candidate:
            chunks = [self.network(state_t[i:i + batch_size]) for i in range(0, len(state_t), batch_size)]
            q = torch.cat(chunks).double().numpy()
            return q if needed is None else np.where(needed, q, 0.0)
        rows, actions = (torch.from_numpy(i) for i in np.nonzero(needed))
        q = np.zeros(needed.shape)
        for i in range(0, len(rows), batch_size):
            r, a = rows[i:i + batch_size], actions[i:i + batch_size]
            q[r.numpy(), a.numpy()] = (self.network.scaled_at(state_t[r], a) * self.network.reward_scale).numpy()
        return q

    def values(self, state: np.ndarray, target_probs: np.ndarray) -> np.ndarray:
        """(N,) V(s) = sum_a pi(a|s) Q(s, a)."""
        return (self.q_values(state) * target_probs).sum(axis=1)


def matmul_dtype(precision: str) -> torch.dtype:
    """`EvaluationConfig.fqe_matmul_precision` -> the fits' matmul dtype ("auto": bfloat16 where the CPU has
    native bfloat16 products, AVX512-BF16 or AMX; elsewhere bfloat16 is emulated and slower than float32)."""
    if precision == "auto":
        native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
        return torch.bfloat16 if native else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[precision]


def fqe_settings(config, seed: int | None = None) -> dict[str, Any]:
    """fit_fqe's keyword settings from an ``EvaluationConfig``: ``fit_fqe(..., **fqe_settings(cfg, seed))``;
    without `seed` also those of ``fit_fqe_ensemble`` (which takes ``seeds``)."""
    settings = {"iterations": config.fqe_iterations, "epochs": config.fqe_epochs,
                "hidden_sizes": tuple(config.fqe_hidden_sizes), "learning_rate": config.fqe_learning_rate,
                "batch_size": config.fqe_batch_size, "precision": matmul_dtype(config.fqe_matmul_precision)}
    return settings if seed is None else {**settings, "seed": seed}


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
    precision: torch.dtype = torch.float32,
) -> FittedQ:
    """Fit Q^pi by fitted Q evaluation on logged transitions; same seed, same model.

    `fit_fqe_ensemble`'s one-member case on every row (see it for the settings).
    """
    rows = np.arange(len(np.asarray(next_target_probs)))
    return fit_fqe_ensemble(state, action, reward, next_state, not_terminal, next_target_probs, gamma,
                            row_sets=[rows], seeds=[seed], init=init, n_steps=n_steps, iterations=iterations,
                            epochs=epochs, hidden_sizes=hidden_sizes, learning_rate=learning_rate,
                            batch_size=batch_size, num_threads=num_threads, layout=layout, precision=precision)[0]


def fit_fqe_ensemble(
    state: np.ndarray,  # (N, F)
    action: np.ndarray,  # (N,) int
    reward: np.ndarray,  # (N,)
    next_state: np.ndarray,  # (N, F); ignored where not_terminal is false
    not_terminal: np.ndarray,  # (N,) bool
    next_target_probs: np.ndarray,  # (N, A)
    gamma: float,
    *,
    row_sets: list[np.ndarray],  # M arrays of row indices (repeats allowed: a bootstrap resample)
    seeds: list[int],  # M seeds
    init: FittedQ | None = None,
    n_steps: np.ndarray | None = None,  # (N,) steps between s and s' (discount gamma^n); None: 1
    iterations: int = 30,
    epochs: int = 2,
    hidden_sizes: Sequence[int] = (64, 64),
    learning_rate: float = 1e-3,
    batch_size: int = 512,
    num_threads: int | None = 1,
    layout: StateLayout | None = None,
    progress: str | None = None,
    precision: torch.dtype = torch.float32,
) -> list[FittedQ]:
    """M FQE fits trained together: member m is ``fit_fqe`` on the rows `row_sets[m]` with seed `seeds[m]`.

    Each member has its own input standardization and reward scale (from its rows), initial weights (its
    seed), minibatch order (its seed) and Adam state; they train in lockstep as one batched ensemble
    (`ensemble.StackedMLP`), several times faster than one fit after another on one CPU thread.
    init: warm start every member from this fitted model (its weights, input standardization and reward scale;
    then `hidden_sizes` and `layout` are ignored). Used for bootstrap refits, which then need fewer iterations.
    layout: with candidate columns, a per-candidate network (`QNetwork`); None: one output per action.
    num_threads: torch intra-op threads while fitting (restored after); these small MLPs run several times
    faster on 1 thread than on 2 busy cores. None keeps torch's setting.
    progress: a progress-bar label (stderr); None: no bar.
    precision: the matmul dtype of the hidden layers (`ensemble.StackedMLP`; `matmul_dtype` from the config).
    """
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        data = _Transitions.build(state, action, reward, next_state, not_terminal, next_target_probs, gamma,
                                  n_steps)
        rows = _check_row_sets(row_sets, seeds, len(data.action))
        return _fit_ensemble(data, rows, seeds, init, iterations, epochs, hidden_sizes, learning_rate,
                             batch_size, layout, progress, precision)
    finally:
        torch.set_num_threads(previous_threads)


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
    precision: torch.dtype = torch.float32,
) -> FittedQ:
    """q(x, a) = E[r | x, a] for DM/DR (FQE with gamma = 0 and a single iteration; `init`: warm start):
    `fit_reward_model_ensemble`'s one-member case on every row."""
    rows = np.arange(len(np.asarray(action)))
    return fit_reward_model_ensemble(state, action, reward, num_actions, row_sets=[rows], seeds=[seed],
                                     epochs=epochs, init=init, hidden_sizes=hidden_sizes,
                                     learning_rate=learning_rate, batch_size=batch_size, num_threads=num_threads,
                                     layout=layout, precision=precision)[0]


def fit_reward_model_ensemble(
    state: np.ndarray,  # (N, F)
    action: np.ndarray,  # (N,) int
    reward: np.ndarray,  # (N,)
    num_actions: int,
    *,
    row_sets: list[np.ndarray],
    seeds: list[int],
    epochs: int = 20,
    init: FittedQ | None = None,
    **settings: Any,
) -> list[FittedQ]:
    """M reward models q(x, a) = E[r | x, a] trained together (FQE with gamma = 0 and one iteration); member m
    is fit on `row_sets[m]` with seed `seeds[m]`. Settings as `fit_fqe_ensemble`'s (init: warm start)."""
    state = np.asarray(state, np.float32)
    n = len(state)
    return fit_fqe_ensemble(state, action, reward, state, np.zeros(n, bool), np.full((n, num_actions), 1.0 / num_actions),
                            0.0, row_sets=row_sets, seeds=seeds, init=init, iterations=1, epochs=epochs,
                            **settings)


@dataclass
class _Transitions:
    """Checked transitions: float32 states, per-row discount gamma^n (0 where terminal), pi(.|s')."""

    state: np.ndarray  # (N, F) float32
    action: np.ndarray  # (N,) int64
    reward: np.ndarray  # (N,) float64
    next_state: np.ndarray  # (N, F) float32
    discount: np.ndarray  # (N,) float64, 0 where terminal
    next_target_probs: np.ndarray  # (N, A) float64, 0 where terminal
    gamma: float

    @classmethod
    def build(cls, state, action, reward, next_state, not_terminal, next_target_probs, gamma, n_steps
              ) -> _Transitions:
        state, next_state = np.asarray(state, np.float32), np.asarray(next_state, np.float32)
        action, reward = np.asarray(action, np.int64), np.asarray(reward, np.float64)
        not_terminal = np.asarray(not_terminal).astype(bool)
        next_target_probs = np.asarray(next_target_probs, np.float64)
        n, num_actions = next_target_probs.shape
        _check_transitions(state, action, reward, next_state, not_terminal, next_target_probs, n, num_actions)
        if not 0 <= gamma <= 1:
            raise EvaluationDataError(f"gamma must be in [0, 1], got {gamma}")
        discount = gamma ** (np.ones(n) if n_steps is None else np.asarray(n_steps, np.float64))  # (N,)
        # Terminal rows may hold anything (NaN) in s' and pi(.|s'): zero them, since 0 * NaN is NaN.
        live = not_terminal[:, None]
        return cls(state, action, reward, np.where(live, next_state, 0.0).astype(np.float32),
                   np.where(not_terminal, discount, 0.0), np.where(live, next_target_probs, 0.0), gamma)


def _check_row_sets(row_sets: Sequence[np.ndarray], seeds: Sequence[int], n: int) -> list[np.ndarray]:
    if len(row_sets) != len(seeds) or not row_sets:
        raise ValueError(f"row_sets and seeds must be equally long and not empty, got {len(row_sets)} row sets "
                         f"and {len(seeds)} seeds")
    rows = [np.asarray(r, np.int64) for r in row_sets]
    for m, r in enumerate(rows):
        if r.ndim != 1 or len(r) == 0 or r.min() < 0 or r.max() >= n:
            raise ValueError(f"row_sets[{m}] must be a non-empty 1-d array of row indices in [0, {n}), got shape "
                             f"{r.shape}" + (f" and range [{r.min()}, {r.max()}]" if r.size else ""))
    return rows


def _member_network(data: _Transitions, counts: np.ndarray, seed: int, num_actions: int,
                    hidden_sizes: Sequence[int], layout: StateLayout | None) -> QNetwork:
    """A fresh network for the rows counted in `counts` (N,): their input standardization (candidate features
    pooled over the slots) and reward spread, weights drawn from `seed` (as a network built alone would be)."""
    total = counts.sum()
    mean = counts @ data.state / total  # (F,) float64
    square = counts @ np.square(data.state, dtype=np.float64) / total  # (F,)
    if layout is not None and layout.candidate_columns is not None:  # pool each candidate feature over the slots
        for columns in layout.candidate_columns:  # (A,) one candidate feature
            mean[columns], square[columns] = mean[columns].mean(), square[columns].mean()
    std = np.sqrt(np.maximum(square - mean**2, 0.0))
    reward_mean = counts @ data.reward / total
    reward_std = float(np.sqrt(max(counts @ np.square(data.reward - reward_mean) / total, 0.0)))
    reward_scale = reward_std if reward_std > 1e-8 else 1.0  # Q is trained in units of the reward's spread
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's global torch RNG
        torch.manual_seed(seed)
        return QNetwork(mean.astype(np.float32), np.where(std > 1e-6, std, 1.0).astype(np.float32), reward_scale,
                        num_actions, hidden_sizes, layout)


def _model_inputs(net: QNetwork, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """(B, F), (B,) -> (B, I) raw (unstandardized) inputs of the network's MLP for Q(s, a): per candidate the
    context and the action's candidate features (`QNetwork.scaled_at`), per action the state itself."""
    if not net.per_candidate:
        return state
    chosen = state.gather(1, net.candidate_columns[:, action].T)  # (B, D)
    return torch.cat([state[:, net.context_columns], chosen], dim=1)


def _input_standardization(nets: Sequence[QNetwork]) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, 1, I) mean and std of each member's MLP inputs (a candidate feature's pooled statistics are every
    slot's, so slot 0's serve)."""
    net = nets[0]
    columns = (torch.cat([net.context_columns, net.candidate_columns[:, 0]]) if net.per_candidate
               else torch.arange(len(net.state_mean)))
    return (torch.stack([n.state_mean[columns] for n in nets])[:, None, :],
            torch.stack([n.state_std[columns] for n in nets])[:, None, :])


@torch.no_grad()
def _fit_ensemble(data: _Transitions, rows: list[np.ndarray], seeds: Sequence[int], init: FittedQ | None,
                  iterations: int, epochs: int, hidden_sizes: Sequence[int], learning_rate: float, batch_size: int,
                  layout: StateLayout | None, progress: str | None, precision: torch.dtype) -> list[FittedQ]:
    n, num_actions = data.next_target_probs.shape
    members = len(rows)
    if init is not None:
        nets = [copy.deepcopy(init.network) for _ in rows]  # its standardization and reward units, too
    else:
        nets = [_member_network(data, np.bincount(r, minlength=n).astype(np.float64), seed, num_actions,
                                hidden_sizes, layout) for r, seed in zip(rows, seeds, strict=True)]
    net = nets[0]
    in_mean, in_std = _input_standardization(nets)  # (M, 1, I)
    scales = torch.tensor([float(m.reward_scale) for m in nets], dtype=torch.float64)[:, None]  # (M, 1)
    r_scaled = (torch.from_numpy(data.reward)[None, :] / scales).float()  # (M, N)
    disc = torch.from_numpy(data.discount).float()  # (N,)
    state, actions = torch.from_numpy(data.state), torch.from_numpy(data.action)
    inputs = _model_inputs(net, state, actions)  # (N, I) once, shared by every member
    # V(s') = sum_a' pi(a'|s') Q(s', a') needs only live rows and actions with pi > 0 (one per row if greedy).
    live = np.flatnonzero(data.discount > 0)
    pair_row, pair_action = np.nonzero(data.next_target_probs[live] > 0)
    target_pairs = (torch.from_numpy(live[pair_row]), torch.from_numpy(pair_action),
                    torch.from_numpy(data.next_target_probs[live[pair_row], pair_action]).float())
    next_state = torch.from_numpy(data.next_state)

    mlp = StackedMLP([m.mlp for m in nets], precision)
    # every member's standardized inputs, once, in the first layer's dtype: (M * N, I), member m's from m * N
    standardized = ((inputs[None] - in_mean) / in_std).to(mlp.input_dtype).view(members * n, -1)
    optimizer = StackedAdam(mlp, learning_rate)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    row_tensors = [torch.from_numpy(r) for r in rows]
    offsets = torch.arange(members)[:, None] * n  # (M, 1) member m's targets start at m * N
    losses: list[list[float]] = [[] for _ in rows]
    steps_per_epoch = max(math.ceil(len(r) / batch_size) for r in rows)
    bar = tqdm(total=iterations * epochs * steps_per_epoch, desc=progress, unit="step", file=sys.stderr,
               disable=progress is None, mininterval=1.0)
    for _ in range(iterations):
        td_target = r_scaled + disc * _next_values(mlp, net, in_mean, in_std, next_state, target_pairs)  # (M, N)
        td_flat = td_target.view(-1)
        total, steps = torch.zeros(members), torch.zeros(members)
        for _ in range(epochs):
            index, weight, active = epoch_schedule(row_tensors, generators, 1, batch_size)
            scales = 2 * weight / weight.sum(dim=2, keepdim=True).clamp(min=1)  # (S, M, B) 2 / rows_m, 0 padding
            full = (weight == 1).all(dim=(1, 2)).tolist()  # (S,) every member has a whole batch
            everyone = active.all(dim=1).tolist()  # (S,)
            # the epoch's inputs and targets in step order, gathered at once: (S, M, B, I) and (S, M, B)
            flat_rows = (index + offsets).view(-1)  # rows of the stacked (M * N, .) tensors
            epoch_inputs = standardized.index_select(0, flat_rows).view(*index.shape, -1)
            epoch_targets = td_flat.index_select(0, flat_rows).view(index.shape)
            for step in range(len(index)):
                activations = mlp.activations(epoch_inputs[step])
                out = activations[-1]  # (M, B, O)
                taken = None if net.per_candidate else actions[index[step]][..., None]  # (M, B, 1)
                q = out[..., 0] if taken is None else out.gather(2, taken)[..., 0]  # (M, B)
                error = q - epoch_targets[step]  # (M, B)
                # loss_m = mean of error^2 over member m's real rows; d loss_m / d q = 2 error / rows_m
                d_q = error * (2.0 / batch_size if full[step] else scales[step])  # (M, B)
                total += (error * d_q).sum(dim=1)  # twice the loss
                d_out = d_q[..., None] if taken is None else torch.zeros_like(out).scatter_(2, taken, d_q[..., None])
                mlp.gradients(activations, d_out)
                optimizer.step(None if everyone[step] else active[step])
                bar.update()
            steps += active.sum(dim=0)
        for m in range(members):
            losses[m].append(float(total[m] / (2 * steps[m])))
    bar.close()
    mlp.write_back([m.mlp for m in nets])
    return [FittedQ(m.eval(), data.gamma, loss) for m, loss in zip(nets, losses, strict=True)]


@torch.no_grad()
def _next_values(mlp: StackedMLP, net: QNetwork, in_mean: torch.Tensor, in_std: torch.Tensor,
                 next_state: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                 chunk: int = 2048) -> torch.Tensor:
    """(M, N) V(s') in each member's reward units with the current weights frozen (0 on terminal rows)."""
    members, n = in_mean.shape[0], len(next_state)
    values = torch.zeros(members, n)
    pair_row, pair_action, pair_prob = pairs  # (P,) each
    frozen = mlp.frozen()
    if net.per_candidate:
        for start in range(0, len(pair_row), chunk):
            rows, acts = pair_row[start:start + chunk], pair_action[start:start + chunk]
            x = _model_inputs(net, next_state[rows], acts)  # (C, I)
            q = mlp((x[None] - in_mean) / in_std, frozen)[..., 0]  # (M, C)
            values.index_add_(1, rows, q * pair_prob[start:start + chunk])
        return values
    live = torch.unique(pair_row)  # (L,) rows whose V is needed
    probs = torch.zeros(len(live), net.mlp[-1].out_features)
    probs[torch.searchsorted(live, pair_row), pair_action] = pair_prob  # (L, A)
    for start in range(0, len(live), chunk):
        rows = live[start:start + chunk]
        q = mlp((next_state[rows][None] - in_mean) / in_std, frozen)  # (M, C, A)
        values[:, rows] = (q * probs[start:start + chunk]).sum(dim=2)
    return values

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
    """`count` models, each `fit(rows, seed_k)` on a bootstrap resample of whole groups (episodes) of the rows,
    one after another (`fit_plan` gives the same row sets and seeds for the ensemble fitters).

    Deterministic per (group, count, seed). Each refit also gets its own seed (its own SGD noise).
    """
    row_sets, seeds = fit_plan(group, count, seed)
    return [fit(rows, k_seed) for rows, k_seed in zip(row_sets[1:], seeds[1:], strict=True)]


def fit_plan(group: np.ndarray, count: int, seed: int = 0) -> tuple[list[np.ndarray], list[int]]:
    """Row sets and seeds of the main fit (every row, `seed`) and `count` refits, each on a bootstrap resample
    of whole groups (episodes) with its own seed: ``fit_*_ensemble(..., row_sets=..., seeds=...)`` fits all
    M = count + 1 at once. Deterministic per (group, count, seed)."""
    rng = np.random.default_rng([seed, 7])
    row_sets = [np.arange(len(np.asarray(group)))] + [resample_groups(group, rng) for _ in range(count)]
    return row_sets, [seed] + [seed + 1000 * (k + 1) for k in range(count)]


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
