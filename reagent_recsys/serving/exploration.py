"""Exploration over the policy's Q-values: the served action and its exact propensity, vectorized over a batch.

The probabilities are computed in float64 and the logged propensity is the probability of the served action
under exactly that distribution, so importance weights computed offline from the log are the served ones.
"""

from __future__ import annotations

import numpy as np


def action_probabilities(q: np.ndarray, mask: np.ndarray, greedy: np.ndarray, exploration: str,
                         temperature: float = 1.0, epsilon: float = 0.0) -> np.ndarray:
    """(B, A) Q, (B, A) bool possible, (B,) greedy action -> (B, A) float64 probabilities (0 where impossible).

    greedy: one-hot on the policy's action; softmax: softmax(Q / temperature) over the possible actions;
    epsilon_greedy: epsilon / |possible| on every possible action plus 1 - epsilon on the greedy one.
    """
    rows = np.arange(len(greedy))
    if exploration == "greedy":
        probs = np.zeros(q.shape, dtype=np.float64)
        probs[rows, greedy] = 1.0
        return probs
    if exploration == "softmax":
        logits = np.where(mask, q / temperature, -np.inf)
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)  # (B, A), 0 where impossible
        return weights / weights.sum(axis=1, keepdims=True)
    if exploration == "epsilon_greedy":
        probs = mask * (epsilon / mask.sum(axis=1, keepdims=True))
        probs[rows, greedy] += 1.0 - epsilon
        return probs
    raise ValueError(f"exploration: unknown kind {exploration!r} (greedy, softmax, epsilon_greedy)")


def sample(probs: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One action per row of (B, A) probabilities -> actions (B,) int64 and their probabilities (B,) float64.

    Inverse-CDF sampling; an action of probability 0 is never drawn (its CDF step is empty).
    """
    cdf = np.cumsum(probs, axis=1)  # (B, A)
    u = rng.random(len(probs)) * cdf[:, -1]  # (B,)
    actions = (cdf > u[:, None]).argmax(axis=1)
    # u * total can round up to the total: fall back to the last action that has probability
    over = cdf[np.arange(len(probs)), actions] <= u
    if over.any():
        actions[over] = probs.shape[1] - 1 - np.argmax(probs[over][:, ::-1] > 0, axis=1)
    return actions.astype(np.int64), probs[np.arange(len(probs)), actions]
