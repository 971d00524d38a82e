"""What the CPE models see: a training-table split, its state layout, the model state and 1-step transitions.

No simulator is involved: which state columns describe each action's candidate comes from the logs' feature
description (``_features.json`` beside the mdp table: document features carry a candidate ``slot``, and
``action.values`` names the action of each slot). Without it, actions have no features and the models are
per action.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reagent_recsys.data.loaders import read_split_arrays
from reagent_recsys.evaluation.bootstrap import EvaluationDataError
from reagent_recsys.evaluation.fqe import next_step_index
from reagent_recsys.evaluation.history import StateLayout, history_features

Split = dict[str, np.ndarray]  # TRAINING columns as arrays (`read_split_arrays`), plus MODEL_STATE when added
MODEL_STATE = "model_state"  # (N, F + H) the state and its episode-history features (`add_model_state`)


def read_split(path: str | Path) -> Split:
    """One split of the training table as flat numpy arrays (checked); rewards and propensities in float64."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no training table split; run workflow.training_table first")
    split = read_split_arrays(path)
    if len(split["action"]) == 0:
        raise EvaluationDataError(f"{path}: the split is empty; nothing to evaluate (check timeline.eval_fraction)")
    return split


def read_features_description(path: str | Path) -> dict[str, Any] | None:
    """The logs' ``_features.json`` ({"features": [{id, name, kind, slot}], "action": {"values": [...]}}), or
    None when there is none (a logs run may have no description: actions then carry no features)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        description = json.loads(path.read_text())
    except ValueError as exc:
        raise EvaluationDataError(f"{path}: not valid JSON ({exc})") from None
    return description if isinstance(description, dict) else None


def candidate_columns(table_ids: Sequence[int], description: Mapping[str, Any] | None,
                      action_names: Sequence[str]) -> np.ndarray | None:
    """(D, A) state column of candidate feature d for action a, or None when some action's features are not
    all in the state (or nothing describes them). Slot k's action is ``action.values[k]`` (default: "k")."""
    if not description:
        return None
    where = {int(f): i for i, f in enumerate(table_ids)}
    slots_per_feature: dict[str, dict[int, int]] = {}
    for spec in description.get("features", []):
        if spec.get("kind") != "document" or spec.get("slot") is None:
            continue
        name = str(spec["name"]).split(".", 1)[-1]
        slots_per_feature.setdefault(name, {})[int(spec["slot"])] = where.get(int(spec["id"]), -1)
    if not slots_per_feature:
        return None
    values = [str(v) for v in (description.get("action") or {}).get("values", [])]
    slot_of = {name: k for k, name in enumerate(values)} if values else {}
    columns = []
    for per_slot in slots_per_feature.values():
        row = []
        for action in action_names:
            slot = slot_of.get(str(action)) if values else (int(action) if str(action).isdigit() else None)
            row.append(per_slot.get(slot, -1) if slot is not None else -1)
        columns.append(row)
    array = np.asarray(columns, dtype=np.int64)  # (D, A)
    return None if (array < 0).any() else array


def state_layout(table_ids: Sequence[int], description: Mapping[str, Any] | None,
                 action_names: Sequence[str]) -> StateLayout:
    """Which table columns are context features, which hold each action's candidate features and which are the
    timeline's history features (``"history"`` in the description)."""
    where = {int(f): i for i, f in enumerate(table_ids)}
    history_ids = ((description or {}).get("history") or {}).get("ids", [])
    return StateLayout.from_candidates(len(table_ids), candidate_columns(table_ids, description, action_names),
                                       sorted(where[int(i)] for i in history_ids if int(i) in where))


def add_model_state(split: Split, layout: StateLayout, decays: Sequence[float]) -> Split:
    """The split with MODEL_STATE: what FQE and the reward model see, the state and its history features."""
    history = history_features(split["mdp_key"], split["sequence_number"], split["state"], split["action"],
                               split["possible_actions_mask"].shape[1], layout, decays)
    return {**split, MODEL_STATE: np.concatenate([split["state"].astype(np.float32), history], axis=1)}


def model_state(split: Split) -> np.ndarray:
    """What FQE and the reward model see: MODEL_STATE when `add_model_state` made it, else the logged state."""
    return split[MODEL_STATE] if MODEL_STATE in split else split["state"]


def network_layout(fqe_model: str, layout: StateLayout | None, width: int) -> StateLayout | None:
    """The FQE / reward-model network's layout over `width` model-state columns (``evaluation.fqe_model``):
    per candidate when the table's `layout` has candidate features (history columns count as context); None:
    one output per action."""
    has_candidates = layout is not None and layout.candidate_columns is not None
    if fqe_model == "per_candidate" and not has_candidates:
        raise ValueError("evaluation.fqe_model: per_candidate needs every action's candidate features in the state "
                         "(document features with a slot in the logs' _features.json); use auto or per_action")
    if fqe_model == "per_action" or not has_candidates:
        return None
    return StateLayout.from_candidates(width, layout.candidate_columns)


def fqe_transitions(train: Split, train_target: np.ndarray) -> dict[str, np.ndarray]:
    """1-step FQE transitions rebuilt from the train split's rows (every logged step, any order).

    s' is the model state (`model_state`) of the episode's next row, r the one-step `reward`, pi(.|s') the
    target on that row (so restricted to its possible actions); the episode's last row is terminal. Unlike the
    table's n-step next_state, whose target would follow the logged actions for n - 1 steps.
    """
    nxt, live = next_step_index(train["mdp_key"], train["sequence_number"])
    state = model_state(train)
    return {"state": state, "action": train["action"], "reward": train["reward"], "next_state": state[nxt],
            "not_terminal": live, "next_target_probs": train_target[nxt]}
