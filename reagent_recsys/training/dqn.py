"""Discrete DQN for logged data, with double-Q, CQL and BCQ as small overrides.

Target: y = n_step_reward + not_terminal * gamma^k * Q_target(s', a'), where a' is the best *possible* next action
and k = n_steps (default: `n_step_reward` already sums gamma^j r_{t+j} for j < n_steps) or, with
`training.time_diff_discount`, k = time_diff (the sequence-number gap, for logs whose steps are unevenly
spaced). gamma = 0 gives the offline contextual bandit: y = reward. The loss is taken in units of
`training.value_scale` (the network's own output units), so it behaves like rewards scaled by 1 / value_scale.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reagent_recsys.config import TrainingConfig
from reagent_recsys.data.loaders import TrainingBatch
from reagent_recsys.training.networks import DQNModel, bcq_filter, masked_fill_impossible, masked_max


class DQN:
    """The update of one batch: `compute_target`, `compute_loss`, `update`.

    `model` may be wrapped in DistributedDataParallel; `net` is always the bare DQNModel. `preprocessor` maps raw
    (values (B, F), presence (B, F)) to (B, D) and is not trained.
    """

    def __init__(self, model: nn.Module, preprocessor: nn.Module, config: TrainingConfig) -> None:
        self.model = model
        self.net: DQNModel = getattr(model, "module", model)
        self.target = copy.deepcopy(self.net).requires_grad_(False)
        self.preprocessor = preprocessor
        self.config = config
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.learning_rate)

    def features(self, values: Tensor, presence: Tensor) -> Tensor:
        return self.preprocessor(values, presence.to(torch.float32))  # (B, D)

    def next_actions(self, next_x: Tensor, next_mask: Tensor, target_q: Tensor) -> Tensor:
        """The bootstrap action a' (B,): plain DQN maximizes the target network itself."""
        return masked_max(target_q, next_mask)[1]

    @torch.no_grad()
    def compute_target(self, batch: TrainingBatch) -> Tensor:
        """(B,) TD targets."""
        next_x = self.features(batch.next_state, batch.next_state_presence)  # (B, D)
        next_mask = batch.possible_next_actions_mask  # (B, A)
        target_q = self.target(next_x)[0]  # (B, A)
        a_next = self.next_actions(next_x, next_mask, target_q)  # (B,)
        next_value = target_q.gather(1, a_next[:, None]).squeeze(1)  # (B,)
        bootstrap = batch.not_terminal & next_mask.any(dim=1)
        steps = batch.time_diff if self.config.time_diff_discount else batch.n_steps
        discount = self.config.gamma ** steps.to(torch.float32)  # (B,)
        return batch.n_step_reward + torch.where(bootstrap, discount * next_value, 0.0)

    def td_loss(self, q_logged: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
        """Huber or MSE between (B,) Q(s, a) and TD targets, both divided by `value_scale`."""
        scale = self.config.value_scale
        loss = F.huber_loss if self.config.loss == "huber" else F.mse_loss
        return loss(q_logged / scale, target / scale, reduction=reduction)

    def compute_loss(self, batch: TrainingBatch) -> tuple[Tensor, dict[str, Tensor]]:
        """Scalar loss and detached statistics."""
        x = self.features(batch.state, batch.state_presence)  # (B, D)
        q, logits = self.model(x)  # (B, A), (B, A)
        q_logged = q.gather(1, batch.action[:, None]).squeeze(1)  # (B,)
        td_loss = self.td_loss(q_logged, self.compute_target(batch))
        q_max, greedy = masked_max(q.detach(), batch.possible_actions_mask)
        stats = {"td_loss": td_loss.detach(), "q_mean": q_logged.detach().mean(), "q_max": q_max.max(),
                 "greedy_action": greedy}
        extra, extra_stats = self.regularizer(batch, q / self.config.value_scale, logits)
        return td_loss + extra, {**stats, **extra_stats}

    def regularizer(self, batch: TrainingBatch, q: Tensor, logits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Extra loss terms of a variant (none for DQN); q (in units of value_scale) and logits are (B, A) from
        this batch's forward."""
        return torch.zeros(()), {}

    def update(self, batch: TrainingBatch) -> dict[str, Tensor]:
        """One gradient step, then a soft target update: theta' <- (1 - tau) theta' + tau theta."""
        loss, stats = self.compute_loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.config.grad_clip_norm or float("inf")
        stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm).detach()
        self.optimizer.step()
        with torch.no_grad():
            for target_p, p in zip(self.target.parameters(), self.net.parameters(), strict=True):
                target_p.lerp_(p, self.config.tau)
        stats["loss"] = loss.detach()
        return stats


class DoubleDQN(DQN):
    """Double-Q: the online network picks a', the target network values it."""

    def next_actions(self, next_x: Tensor, next_mask: Tensor, target_q: Tensor) -> Tensor:
        return masked_max(self.net(next_x)[0], next_mask)[1]


class CQL(DQN):
    """Discrete CQL: + alpha * E[logsumexp_a Q(s, a) - Q(s, a_logged)], over the possible actions."""

    def regularizer(self, batch: TrainingBatch, q: Tensor, logits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        q_logged = q.gather(1, batch.action[:, None]).squeeze(1)  # (B,)
        cql = (torch.logsumexp(masked_fill_impossible(q, batch.possible_actions_mask), dim=1) - q_logged).mean()
        return self.config.cql_alpha * cql, {"cql_loss": cql.detach()}


class BCQ(DQN):
    """Discrete BCQ: a behavior-cloning head learns the logging policy; a' is the online-greedy action among those
    with pi_b(a'|s') / max pi_b >= bcq_threshold (double-Q selection is built in)."""

    def next_actions(self, next_x: Tensor, next_mask: Tensor, target_q: Tensor) -> Tensor:
        q, logits = self.net(next_x)
        return masked_max(q, bcq_filter(logits, next_mask, self.config.bcq_threshold))[1]

    def regularizer(self, batch: TrainingBatch, q: Tensor, logits: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        bc = F.cross_entropy(logits.masked_fill(~batch.possible_actions_mask, -1e9), batch.action)
        return bc, {"bc_loss": bc.detach()}


class DoubleCQL(CQL, DoubleDQN):
    """CQL with double-Q targets."""


def build_algorithm(model: nn.Module, preprocessor: nn.Module, config: TrainingConfig) -> DQN:
    """The update rule for `training.algorithm` and `training.double_q`."""
    if config.algorithm == "bcq":
        return BCQ(model, preprocessor, config)
    if config.algorithm == "cql":
        return (DoubleCQL if config.double_q else CQL)(model, preprocessor, config)
    return (DoubleDQN if config.double_q else DQN)(model, preprocessor, config)
