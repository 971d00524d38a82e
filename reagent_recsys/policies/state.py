"""The simulator's state as an exported policy sees it: columns picked BY FEATURE ID, actions named by slot.

One definition, used wherever a TorchScript policy acts on simulated users: the ground truth
(``evaluation.ground_truth.ServedPolicyActor``) and the ``exported`` logging policy of ``workflow.offline_gym``.
The simulator's state columns are exactly the mdp table's ``state_features`` (``workflow.offline_gym`` writes
``state[:, j]`` under id ``env.features[j].id``), so a policy sees here what it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def feature_columns(policy_ids: Sequence[int], env_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """For each policy feature id: its column in the env state (index, 0 when absent) and whether present."""
    where = {int(f): i for i, f in enumerate(env_ids)}
    index = np.array([where.get(int(f), 0) for f in policy_ids], dtype=np.int64)  # (Fp,)
    present = np.array([int(f) in where for f in policy_ids], dtype=bool)  # (Fp,)
    return index, present


def map_state(state: np.ndarray, index: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Env state (B, Fe) -> policy state (B, Fp) and presence (B, Fp): columns picked by id, 0 where absent."""
    mapped = np.where(present[None, :], state[:, index], 0.0).astype(np.float32)  # (B, Fp)
    presence = np.broadcast_to(present[None, :], mapped.shape).astype(np.float32)  # (B, Fp)
    return mapped, presence


def action_slots(action_names: Sequence[str], num_candidates: int) -> np.ndarray:
    """(A,) candidate slot of each policy action (-1 when the name is not a slot of this simulator)."""
    slots = []
    for name in action_names:
        try:
            slot = int(name)
        except ValueError:
            slot = -1
        slots.append(slot if 0 <= slot < num_candidates else -1)
    slots_arr = np.array(slots, dtype=np.int64)
    if (slots_arr < 0).all():
        raise ValueError(f"none of the policy's action names {list(action_names)[:10]} is a candidate slot "
                         f"in [0, {num_candidates})")
    return slots_arr
