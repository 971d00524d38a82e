"""Synthetic training tables (exact `TRAINING` schema) for tests and benchmarks.

A contextual-bandit-shaped world with episodes: state ~ N(0, 1) of F features, A actions, and
reward(s, a) = s[a % F] + noise, so the best action is known (`best_action`). The logged policy is uniform over
the possible actions; each action is impossible with probability `mask_rate` (the logged one never is).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reagent_recsys.artifacts import atomic_directory, write_json_atomic
from reagent_recsys.schema import MANIFEST_FILE, TRAINING


def _fixed_list(values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    n, width = values.shape
    flat = pa.array(values.reshape(-1), type=value_type)
    offsets = pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def synthetic_arrays(rows: int, num_features: int = 24, num_actions: int = 20, episode_length: int = 10,
                     mask_rate: float = 0.2, noise: float = 0.1, seed: int = 0) -> dict[str, np.ndarray]:
    """Column arrays of a synthetic training table (numpy, list columns as (rows, K))."""
    rng = np.random.default_rng(seed)
    state = rng.standard_normal((rows + 1, num_features)).astype(np.float32)  # (N + 1, F)
    presence = (rng.random((rows + 1, num_features)) > 0.05).astype(np.int8)
    state = state * presence
    mask = (rng.random((rows + 1, num_actions)) > mask_rate).astype(np.int8)  # (N + 1, A)
    scores = rng.random((rows + 1, num_actions)) + mask  # the logged action is uniform over possible actions
    action = np.argmax(scores, axis=1)
    mask[np.arange(rows + 1), action] = 1
    reward = state[np.arange(rows + 1), action % num_features] + noise * rng.standard_normal(rows + 1)
    seq = np.arange(rows) % episode_length
    not_terminal = (seq < episode_length - 1) & (np.arange(rows) < rows - 1)
    nt = not_terminal[:, None]
    return {
        "mdp_key": (np.arange(rows) // episode_length).astype(np.int64),
        "sequence_number": seq.astype(np.int64),
        "state": state[:-1],
        "state_presence": presence[:-1],
        "action": action[:-1].astype(np.int64),
        "action_probability": 1.0 / mask[:-1].sum(axis=1).astype(np.float64),
        "reward": reward[:-1].astype(np.float64),
        "n_step_reward": reward[:-1].astype(np.float64),
        "next_state": np.where(nt, state[1:], 0).astype(np.float32),
        "next_state_presence": np.where(nt, presence[1:], 0).astype(np.int8),
        "next_action": np.where(not_terminal, action[1:], 0).astype(np.int64),
        "possible_actions_mask": mask[:-1],
        "possible_next_actions_mask": np.where(nt, mask[1:], 0).astype(np.int8),
        "not_terminal": not_terminal,
        "time_diff": np.ones(rows, dtype=np.int64),
        "n_steps": np.ones(rows, dtype=np.int64),
    }


def best_action(state: np.ndarray, possible_actions_mask: np.ndarray) -> np.ndarray:
    """The reward-maximizing possible action of the synthetic world: argmax_a s[a % F]. (B, F), (B, A) -> (B,)"""
    num_actions = possible_actions_mask.shape[1]
    expected = state[:, np.arange(num_actions) % state.shape[1]]  # (B, A)
    return np.where(possible_actions_mask.astype(bool), expected, -np.inf).argmax(axis=1)


def arrays_to_table(arrays: dict[str, np.ndarray]) -> pa.Table:
    columns = []
    for column in TRAINING.columns:
        values = arrays[column.name]
        if pa.types.is_list(column.type):
            columns.append(_fixed_list(values, column.type.value_type))
        else:
            columns.append(pa.array(values, type=column.type))
    return pa.Table.from_arrays(columns, schema=TRAINING.arrow())


def write_synthetic_training_table(path: str | Path, rows: int, num_features: int = 24, num_actions: int = 20,
                                   files: int = 2, row_group_size: int = 1000, seed: int = 0,
                                   **kwargs) -> dict:
    """Write `files` Parquet files of TRAINING rows to `path` (atomically) with a manifest; return the manifest."""
    table = arrays_to_table(synthetic_arrays(rows, num_features, num_actions, seed=seed, **kwargs))
    manifest = {
        "rows": rows,
        "feature_ids": list(range(1, num_features + 1)),
        "action_names": [str(a) for a in range(num_actions)],
        "synthetic": True,
        "seed": seed,
    }
    bounds = np.linspace(0, rows, files + 1).astype(int)
    with atomic_directory(path) as tmp:
        for i in range(files):
            pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), tmp / f"part-{i:05d}.parquet",
                           row_group_size=row_group_size)
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
    return manifest


def synthetic_normalization(feature_ids: list[int]):  # -> NormalizationArtifact
    """CONTINUOUS mean 0 / stddev 1 for every feature (the synthetic state is standard normal)."""
    from reagent_recsys.normalization import CONTINUOUS, NormalizationArtifact, NormalizationParameters

    params = {f: NormalizationParameters(CONTINUOUS, mean=0.0, stddev=1.0) for f in feature_ids}
    return NormalizationArtifact(list(feature_ids), params, names={f: f"feature_{f}" for f in feature_ids})


def write_synthetic_run(output_dir: str | Path, train_rows: int, eval_rows: int = 0, num_features: int = 24,
                        num_actions: int = 20, seed: int = 0, **kwargs) -> dict:
    """What workflow.train reads: training_table/{train,eval} and normalization.json under `output_dir`."""
    output_dir = Path(output_dir)
    manifest = write_synthetic_training_table(output_dir / "training_table" / "train", train_rows, num_features,
                                              num_actions, seed=seed, **kwargs)
    if eval_rows:
        write_synthetic_training_table(output_dir / "training_table" / "eval", eval_rows, num_features,
                                       num_actions, seed=seed + 1, **kwargs)
    synthetic_normalization(manifest["feature_ids"]).save(output_dir / "normalization.json")
    return manifest


def write_training_split(path: str | Path, split: dict[str, np.ndarray], row_group_size: int = 4096) -> None:
    """Write a TRAINING split from its per-step columns (mdp_key, sequence_number, state, action,
    action_probability, reward, possible_actions_mask; optional state_presence): the 1-step next_* columns,
    not_terminal and n-step columns are derived from each episode's next row. Atomic; no manifest."""
    order = np.lexsort((split["sequence_number"], split["mdp_key"]))
    s = {k: np.asarray(v)[order] for k, v in split.items()}
    n = len(order)
    live = np.r_[s["mdp_key"][1:] == s["mdp_key"][:-1], False]  # (N,) the next row is the same episode's
    nxt = np.where(live, np.minimum(np.arange(n) + 1, n - 1), np.arange(n))
    presence = s.get("state_presence", np.ones_like(s["state"], dtype=np.int8)).astype(np.int8)
    mask = s["possible_actions_mask"].astype(np.int8)
    arrays = {
        "mdp_key": s["mdp_key"].astype(np.int64), "sequence_number": s["sequence_number"].astype(np.int64),
        "state": s["state"].astype(np.float32), "state_presence": presence, "action": s["action"].astype(np.int64),
        "action_probability": s["action_probability"].astype(np.float64), "reward": s["reward"].astype(np.float64),
        "n_step_reward": s["reward"].astype(np.float64),
        "next_state": np.where(live[:, None], s["state"][nxt], 0).astype(np.float32),
        "next_state_presence": np.where(live[:, None], presence[nxt], 0).astype(np.int8),
        "next_action": np.where(live, s["action"][nxt], 0).astype(np.int64),
        "possible_actions_mask": mask, "possible_next_actions_mask": np.where(live[:, None], mask[nxt], 0).astype(np.int8),
        "not_terminal": live, "time_diff": np.ones(n, np.int64), "n_steps": np.ones(n, np.int64),
    }
    with atomic_directory(path) as tmp:
        pq.write_table(arrays_to_table(arrays), tmp / "part-00000.parquet", row_group_size=row_group_size)
