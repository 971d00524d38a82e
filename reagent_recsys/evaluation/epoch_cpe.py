"""Cheap counterfactual estimates of the current greedy policy after each training epoch (as ReAgent did).

The trainer hands in the model's Q-values on the eval split (``training_table/eval``); the greedy policy
(argmax over the possible actions) is evaluated with

* one-step IPS and SNIPS, and, when the model is a bandit (gamma = 0, so Q(s, a) estimates E[r | s, a]),
  DM and DR with the model's own Q as the reward model;
* sequential WPDIS and WDR with the model's own Q-values as the DR model, discounted by the training gamma.

Every number comes from the estimator functions of ``reagent_recsys.evaluation`` with a small bootstrap (only
the point values are logged, so ``samples`` stays at the minimum). Values are also reported relative to the
logging policy on the same data (1.0 = as good as the logged actions).
"""

from __future__ import annotations

import math
from dataclasses import make_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reagent_recsys.data.loaders import read_split_arrays
from reagent_recsys.evaluation.bootstrap import BootstrapSpec, Estimate
from reagent_recsys.evaluation.one_step import (
    BanditData,
    direct_method,
    doubly_robust,
    inverse_propensity_score,
    self_normalized_ips,
)
from reagent_recsys.evaluation.sequential import (
    EpisodeData,
    pad_episodes,
    weighted_doubly_robust,
    weighted_per_decision_importance_sampling,
)
from reagent_recsys.schema import TRAINING

EVAL_COLUMNS = ("state", "state_presence", "action", "action_probability", "reward", "possible_actions_mask",
                "mdp_key", "sequence_number")


def _split_len(self: Any) -> int:
    return len(self.action)


def _read(cls: type, path: str | Path) -> Any:
    """Read a training-table split (checked by the loaders' rules)."""
    return cls.from_arrays(read_split_arrays(path))


def _from_arrays(cls: type, split: dict[str, np.ndarray]) -> Any:
    """The EVAL_COLUMNS of a whole split (`read_split_arrays` output), cast to the TRAINING read dtypes."""
    return cls(**{name: np.asarray(split[name]).astype(TRAINING.dtypes()[name], copy=False) for name in EVAL_COLUMNS})


# The eval split's columns that the per-epoch CPE needs as numpy arrays, typed by `TRAINING` (N rows, F features,
# A actions): state (N, F) float32, state_presence (N, F) bool, action (N,) int64, action_probability and reward
# (N,) float64, possible_actions_mask (N, A) bool, mdp_key and sequence_number (N,) int64.
EvalSplit = make_dataclass("EvalSplit", [(name, np.ndarray) for name in EVAL_COLUMNS], namespace={
    "__len__": _split_len, "read": classmethod(_read), "from_arrays": classmethod(_from_arrays),
    "__doc__": "The eval split's columns the per-epoch CPE needs (TRAINING's names and read dtypes)."})


def greedy_probabilities(q_values: np.ndarray, possible: np.ndarray) -> np.ndarray:
    """(N, A) Q and possible-action mask -> (N, A) one-hot of the greedy possible action."""
    masked = np.where(possible, q_values, -np.inf)  # (N, A)
    return np.eye(q_values.shape[1])[masked.argmax(axis=1)]


class EpochCPE:
    """Per-epoch CPE of the greedy policy on one eval split; padding of episodes is done once here."""

    def __init__(self, split: EvalSplit, gamma: float, bootstrap_samples: int = 20, seed: int = 0) -> None:
        self.split = split
        self.gamma = gamma
        self.spec = BootstrapSpec(samples=bootstrap_samples, seed=seed)
        flat = {"row": np.arange(len(split))}
        padded, self.mask, _ = pad_episodes(split.mdp_key, split.sequence_number, flat)
        self.row = padded["row"]  # (E, T) index into the flat rows (0 on padding)

    def _episodes(self, values: np.ndarray) -> np.ndarray:
        return values[self.row]  # (E, T, ...)

    def estimate(self, q_values: np.ndarray, allowed: np.ndarray | None = None) -> dict[str, Estimate]:
        """(N, A) Q-values of the model on the split's states -> estimates of its greedy policy by name.

        allowed: (N, A) actions the policy may pick (e.g. BCQ's filter); None: the possible actions.
        """
        split = self.split
        target = greedy_probabilities(q_values, split.possible_actions_mask if allowed is None else allowed)
        bandit_model = q_values if self.gamma == 0 else None
        bandit = BanditData(split.action, split.action_probability, split.reward, target,
                            reward_predictions=bandit_model, possible_action_mask=split.possible_actions_mask)
        found = {"one_step/IPS": inverse_propensity_score(bandit, self.spec),
                 "one_step/SNIPS": self_normalized_ips(bandit, self.spec)}
        if bandit_model is not None:
            found["one_step/DM"] = direct_method(bandit, self.spec)
            found["one_step/DR"] = doubly_robust(bandit, self.spec)
        episodes = EpisodeData(
            reward=self._episodes(split.reward), mask=self.mask, logged_action=self._episodes(split.action),
            logged_propensity=self._episodes(split.action_probability), target_probs=self._episodes(target),
            gamma=self.gamma, q_estimates=self._episodes(q_values),
            possible_action_mask=self._episodes(split.possible_actions_mask))
        found["sequential/WPDIS"] = weighted_per_decision_importance_sampling(episodes, self.spec)
        found["sequential/WDR"] = weighted_doubly_robust(episodes, self.spec)
        return found

    def scalars(self, q_values: np.ndarray, allowed: np.ndarray | None = None) -> dict[str, float]:
        """TensorBoard scalars `cpe/<kind>/<name>` (value) and `cpe/<kind>/<name>_relative` (finite ones only)."""
        out: dict[str, float] = {}
        for name, est in self.estimate(q_values, allowed).items():
            for key, value in ((f"cpe/{name}", est.value), (f"cpe/{name}_relative", est.relative)):
                if value is not None and math.isfinite(value):
                    out[key] = float(value)
        return out
