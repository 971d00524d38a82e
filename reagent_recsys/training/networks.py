"""Q-networks over normalized state features (the Preprocessor's (B, D) output)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def mlp(input_dim: int, hidden_sizes: list[int], output_dim: int) -> nn.Sequential:
    """Linear-ReLU layers of `hidden_sizes`, then a linear output layer."""
    layers: list[nn.Module] = []
    for width in hidden_sizes:
        layers += [nn.Linear(input_dim, width), nn.ReLU()]
        input_dim = width
    layers.append(nn.Linear(input_dim, output_dim))
    return nn.Sequential(*layers)


class QNetwork(nn.Module):
    """(B, D) -> (B, A) Q-values. Dueling: Q = V(s) + A(s, a) - mean_a A(s, a) on a shared trunk.

    The layers output Q / `value_scale` (a constant), so with a value_scale near the size of the returns they work
    in O(1) units while the Q-values stay in reward units.
    """

    def __init__(self, input_dim: int, num_actions: int, hidden_sizes: list[int], dueling: bool = True,
                 value_scale: float = 1.0) -> None:
        super().__init__()
        self.value_scale = float(value_scale)
        self.dueling = dueling
        if dueling and hidden_sizes:
            self.trunk = mlp(input_dim, hidden_sizes[:-1], hidden_sizes[-1])
            self.value = nn.Linear(hidden_sizes[-1], 1)
            self.advantage = nn.Linear(hidden_sizes[-1], num_actions)
        else:
            self.dueling = False
            self.trunk = mlp(input_dim, hidden_sizes, num_actions)
            self.value = nn.Identity()
            self.advantage = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.trunk(x)  # (B, H) dueling, else (B, A)
        if not self.dueling:
            return h * self.value_scale
        h = torch.relu(h)
        advantage = self.advantage(h)  # (B, A)
        return (self.value(h) + advantage - advantage.mean(dim=1, keepdim=True)) * self.value_scale


class DQNModel(nn.Module):
    """The trainable part: a Q-network and, for BCQ, a behavior-cloning head (logits of the logging policy)."""

    def __init__(self, input_dim: int, num_actions: int, hidden_sizes: list[int], dueling: bool = True,
                 behavior_cloning: bool = False, value_scale: float = 1.0) -> None:
        super().__init__()
        self.q = QNetwork(input_dim, num_actions, hidden_sizes, dueling, value_scale)
        self.behavior_cloning = behavior_cloning
        self.imitator = mlp(input_dim, hidden_sizes, num_actions) if behavior_cloning else nn.Identity()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, D) -> Q-values (B, A) and imitator logits (B, A) (the Q-values again without BCQ)."""
        q = self.q(x)
        return q, (self.imitator(x) if self.behavior_cloning else q)


def masked_fill_impossible(values: Tensor, mask: Tensor) -> Tensor:
    """Impossible actions -> -inf, so they never win a max or argmax. (B, A), (B, A) bool -> (B, A)"""
    return values.masked_fill(~mask, float("-inf"))


def masked_max(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Max and argmax over the possible actions; rows with no possible action give (0, 0). -> (B,), (B,)"""
    best, index = masked_fill_impossible(values, mask).max(dim=1)
    none = ~mask.any(dim=1)
    return best.masked_fill(none, 0.0), index.masked_fill(none, 0)


def bcq_filter(logits: Tensor, mask: Tensor, threshold: float) -> Tensor:
    """Discrete BCQ: keep actions with pi_b(a|s) / max_a pi_b(a|s) >= threshold among the possible ones.

    (B, A) logits, (B, A) bool -> (B, A) bool; the most likely possible action always survives.
    """
    log_probs = torch.log_softmax(masked_fill_impossible(logits, mask), dim=1)  # (B, A)
    ratio = torch.exp(log_probs - log_probs.max(dim=1, keepdim=True).values)
    return mask & (ratio >= threshold)
