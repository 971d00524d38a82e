"""Episode-history features for the evaluation models (FQE and the reward model).

When part of the user's state is latent (sweet_bitter's satisfaction), the logged observation is not a Markov
state: what the user will do next depends on what they were shown before. A model of Q(s, a) that sees only s
then averages over the LOGGING policy's histories and cannot tell a policy that built satisfaction from one that
spent it (FQE valued the latent policy at about half its true return). Summaries of each step's past fix that:

    h_t(d) = sum_{k < t} d^(t-1-k) x_k      (0 at an episode's first step; d = 1: plain running sums)

for each decay d, where x_k holds step k's user/response/time features and the features of the candidate chosen
at step k (or a one-hot of the action when actions have no features): the decayed sums of reagent_recsys/history.py
(`numpy_history`), over the split's columns. Columns that already are history features (the timeline's
`timeline.history`) are not summed again. Only the evaluation models see these sums; the evaluated policy keeps
acting on its own features. They depend only on the logged past, never on the future.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from reagent_recsys.history import HistorySpec, numpy_history


@dataclass(frozen=True)
class StateLayout:
    """Which state columns describe the user (context), which describe each action's candidate and which are
    history features the timeline computed."""

    context_columns: np.ndarray  # (U,) state columns that are neither candidate nor history features
    candidate_columns: np.ndarray | None  # (D, A) state column of candidate feature d for action a; None: no features
    history_columns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (H,) timeline's

    @classmethod
    def from_candidates(cls, num_features: int, candidate_columns: np.ndarray | None,
                        history_columns: Sequence[int] = ()) -> StateLayout:
        """The layout of a state of `num_features` columns whose candidate features are `candidate_columns` and
        whose `history_columns` are history features already."""
        taken = set() if candidate_columns is None else set(np.asarray(candidate_columns).ravel().tolist())
        taken |= {int(c) for c in history_columns}
        context = np.array([c for c in range(num_features) if c not in taken], dtype=np.int64)
        return cls(context, None if candidate_columns is None else np.asarray(candidate_columns, np.int64),
                   np.asarray(history_columns, dtype=np.int64))

    def step_inputs(self, state: np.ndarray, action: np.ndarray, num_actions: int) -> np.ndarray:
        """(N, U + D) x_k: the context features and the chosen candidate's features (or (N, U + A) with a one-hot)."""
        context = state[:, self.context_columns]
        if self.candidate_columns is None:
            chosen = np.eye(num_actions, dtype=state.dtype)[action]  # (N, A)
        else:
            chosen = state[np.arange(len(state))[:, None], self.candidate_columns[:, action].T]  # (N, D)
        return np.concatenate([context, chosen], axis=1)

    def history_spec(self, decays: Sequence[float], num_actions: int) -> HistorySpec:
        """The sums of `step_inputs`' columns at each decay, as a history spec (sources state.<column>,
        candidate.<d> or action.<index>, in step_inputs' order)."""
        chosen = ([f"action.{a}" for a in range(num_actions)] if self.candidate_columns is None
                  else [f"candidate.{d}" for d in range(len(self.candidate_columns))])
        sources = [f"state.{c}" for c in self.context_columns.tolist()] + chosen
        return HistorySpec(sums=tuple(sources) if decays else (), decays=tuple(decays))


def history_features(episode_key: np.ndarray, sequence_number: np.ndarray, state: np.ndarray, action: np.ndarray,
                     num_actions: int, layout: StateLayout, decays: Sequence[float]) -> np.ndarray:
    """(N, (U + D) * len(decays)) float32 decayed sums of each row's earlier `step_inputs` in its episode
    (`numpy_history` of `layout.history_spec`). Rows may come in any order; gaps in sequence numbers count as
    one step."""
    spec = layout.history_spec(decays, num_actions)
    if not spec.features:
        return np.zeros((len(episode_key), 0), dtype=np.float32)
    return numpy_history(episode_key, sequence_number, layout.step_inputs(state, action, num_actions), spec)
