"""Episode-history features for the evaluation models (FQE and the reward model).

When part of the user's state is latent (sweet_bitter's satisfaction), the logged observation is not a Markov
state: what the user will do next depends on what they were shown before. A model of Q(s, a) that sees only s
then averages over the LOGGING policy's histories and cannot tell a policy that built satisfaction from one that
spent it (FQE valued the latent policy at about half its true return). Summaries of each step's past fix that:

    h_t(d) = sum_{k < t} d^(t-1-k) x_k      (0 at an episode's first step; d = 1: plain running sums)

for each decay d, where x_k holds step k's user/response/time features and the features of the candidate chosen
at step k (or a one-hot of the action when actions have no features). Only the evaluation models see them; the
evaluated policy keeps acting on its own features. They depend only on the logged past, never on the future.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from reagent_recsys.evaluation.bootstrap import EvaluationDataError


@dataclass(frozen=True)
class StateLayout:
    """Which state columns describe the user (context) and which describe each action's candidate."""

    context_columns: np.ndarray  # (U,) state columns that are not candidate features
    candidate_columns: np.ndarray | None  # (D, A) state column of candidate feature d for action a; None: no features

    @classmethod
    def from_candidates(cls, num_features: int, candidate_columns: np.ndarray | None) -> StateLayout:
        """The layout of a state of `num_features` columns whose candidate features are `candidate_columns`."""
        taken = set() if candidate_columns is None else set(np.asarray(candidate_columns).ravel().tolist())
        context = np.array([c for c in range(num_features) if c not in taken], dtype=np.int64)
        return cls(context, None if candidate_columns is None else np.asarray(candidate_columns, np.int64))

    def step_inputs(self, state: np.ndarray, action: np.ndarray, num_actions: int) -> np.ndarray:
        """(N, U + D) x_k: the context features and the chosen candidate's features (or (N, U + A) with a one-hot)."""
        context = state[:, self.context_columns]
        if self.candidate_columns is None:
            chosen = np.eye(num_actions, dtype=state.dtype)[action]  # (N, A)
        else:
            chosen = state[np.arange(len(state))[:, None], self.candidate_columns[:, action].T]  # (N, D)
        return np.concatenate([context, chosen], axis=1)


def history_features(episode_key: np.ndarray, sequence_number: np.ndarray, step_inputs: np.ndarray,
                     decays: Sequence[float]) -> np.ndarray:
    """(N, len(decays) * X) float32: for each decay d, h_t(d) = sum_{k<t} d^(t-1-k) x_k within each episode.

    Rows may come in any order (steps are ordered by sequence_number within mdp key; gaps count as one step).
    Vectorized over episodes: one pass per step position, so cost ~ N * len(decays) + horizon.
    """
    key, seq = np.asarray(episode_key), np.asarray(sequence_number)
    x = np.asarray(step_inputs, dtype=np.float64)
    if key.ndim != 1 or seq.shape != key.shape or x.shape[:1] != key.shape:
        raise EvaluationDataError(f"episode_key, sequence_number and step_inputs must have the same rows, got "
                                  f"shapes {key.shape}, {seq.shape} and {x.shape}")
    if not decays:
        return np.zeros((len(key), 0), dtype=np.float32)
    order = np.lexsort((seq, key))  # (N,) rows in episode order
    sorted_key = key[order]
    new_episode = np.r_[True, sorted_key[1:] != sorted_key[:-1]]  # (N,)
    position = np.arange(len(order)) - np.flatnonzero(new_episode)[np.cumsum(new_episode) - 1]  # (N,)
    rows_at = np.split(np.argsort(position, kind="stable"), np.cumsum(np.bincount(position))[:-1])  # per position
    x_sorted = x[order]
    out = np.empty((len(key), len(decays) * x.shape[1]), dtype=np.float32)
    for i, decay in enumerate(decays):
        h = np.zeros_like(x_sorted)  # (N, X) in episode order
        for rows in rows_at[1:]:  # a step's predecessor is the row just before it
            h[rows] = decay * h[rows - 1] + x_sorted[rows - 1]
        out[order, i * x.shape[1]:(i + 1) * x.shape[1]] = h
    return out
