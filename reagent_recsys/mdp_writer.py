"""The mdp table from numpy: Arrow arrays built from buffers (no per-row Python), Parquet partitioned by ``ds``.

Layout: ``<table>/ds=<ds>/part-<i>.parquet`` (the ``ds`` column lives in the directory name, as Spark and
pyarrow's hive partitioning expect) plus ``_features.json`` and ``_manifest.json`` beside the partitions.
Rows are episode-major: all steps of an episode are consecutive and ordered by ``sequence_number``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from reagent_recsys.schema import MDP

# Parquet settings measured by benchmarks/bench_offline_gym.py (see benchmarks/RESULTS.md). The nested columns
# (22 + 20 + 4 values per row) dominate the write; dictionary-encoding their strings costs more than it saves
# (lz4 shrinks the repeats to ~4 bytes a row anyway), so only `action` is dictionary-encoded. v2 data pages.
PARQUET_OPTIONS: dict[str, Any] = {
    "compression": "lz4",
    "use_dictionary": ["action"],
    "data_page_version": "2.0",
    "write_statistics": ["mdp_id", "sequence_number"],
}
ROW_GROUP_SIZE = 1 << 20

DS_PARTITIONING = pads.partitioning(pa.schema([pa.field("ds", pa.string())]), flavor="hive")

# The MDP types with non-null map values and list elements (what Spark's schema says too); the Parquet writer
# skips validity checks for them. schema.MDP.check_arrow accepts them as MDP's types.
STATE_MAP = pa.map_(pa.int64(), pa.field("value", pa.float32(), nullable=False))
METRICS_MAP = pa.map_(pa.string(), pa.field("value", pa.float64(), nullable=False))
ACTION_LIST = pa.list_(pa.field("element", pa.string(), nullable=False))
_FILE_TYPES = {"state_features": STATE_MAP, "metrics": METRICS_MAP, "possible_actions": ACTION_LIST}


def file_schema() -> pa.Schema:
    """MDP without `ds` (the partition directory carries it), with non-null nested children."""
    return pa.schema([
        pa.field(f.name, _FILE_TYPES.get(f.name, f.type), nullable=f.nullable) for f in MDP.arrow() if f.name != "ds"
    ])


@dataclass
class EpisodeBatch:
    """The logged steps of a batch of B episodes, time-major (T = the longest episode of the batch)."""

    first_episode: int  # global index of the batch's first episode (names its mdp_ids)
    states: np.ndarray  # (T, B, F) float32 state BEFORE each action
    actions: np.ndarray  # (T, B) int64 candidate slot of the first slate item
    propensities: np.ndarray  # (T, B) float64 exact logging probability of the action
    rewards: np.ndarray  # (T, B) float64
    metrics: dict[str, np.ndarray]  # name -> (T, B) float64
    alive: np.ndarray  # (T, B) bool: the step happened (its episode had not ended before it)

    @property
    def num_rows(self) -> int:
        return int(self.alive.sum())


def string_array(codes: np.ndarray, names: list[str]) -> pa.Array:
    """The Arrow string array names[codes] (codes (R,) ints), gathered by Arrow's C++ `take`."""
    return pa.array(names, type=pa.string()).take(pa.array(np.asarray(codes, dtype=np.int64)))


@lru_cache(maxsize=2)
def repeated_strings(names: tuple[str, ...], times: int) -> pa.StringArray:
    """`names` repeated `times` times ((times * V,) strings), built from buffers with np.tile."""
    encoded = [n.encode() for n in names]
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)  # (V,)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])  # (V,)
    block = int(lengths.sum())
    offsets = np.empty(times * len(names) + 1, dtype=np.int32)
    offsets[:-1] = (np.arange(times, dtype=np.int64)[:, None] * block + starts[None, :]).reshape(-1)
    offsets[-1] = times * block
    data = np.tile(np.frombuffer(b"".join(encoded), dtype=np.uint8), times)
    return pa.StringArray.from_buffers(times * len(names), pa.py_buffer(offsets), pa.py_buffer(data))


def numbered_strings(prefix: str, numbers: np.ndarray, width: int) -> pa.StringArray:
    """f"{prefix}{n:0{width}d}" for every n (non-negative, < 10**width), from buffers."""
    numbers = np.asarray(numbers, dtype=np.int64)
    pre = np.frombuffer(prefix.encode(), dtype=np.uint8)
    digits = (numbers[:, None] // 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)) % 10 + ord("0")  # (R, W)
    chars = np.concatenate([np.broadcast_to(pre, (len(numbers), len(pre))), digits.astype(np.uint8)], axis=1)
    size = chars.shape[1]
    offsets = np.arange(len(numbers) + 1, dtype=np.int32) * size
    return pa.StringArray.from_buffers(len(numbers), pa.py_buffer(offsets), pa.py_buffer(chars.reshape(-1)))


@lru_cache(maxsize=2)
def _steps(rows: int, width: int) -> pa.Array:
    """int32 offsets 0, width, 2 * width, ... of `rows` fixed-length lists (cached: batches repeat sizes)."""
    return pa.array(np.arange(rows + 1, dtype=np.int32) * width)


@lru_cache(maxsize=2)
def _repeated_keys(keys: tuple[Any, ...], rows: int) -> pa.Array:
    if isinstance(keys[0], str):
        return repeated_strings(keys, rows)
    return pa.array(np.broadcast_to(np.asarray(keys, dtype=np.int64), (rows, len(keys))).reshape(-1))


def map_array(map_type: pa.MapType, keys: tuple[Any, ...], values: np.ndarray) -> pa.Array:
    """A map array with the same `keys` in every row and `values` (R, K) as the items, from buffers."""
    rows, width = values.shape
    entries = pa.StructArray.from_arrays(
        [_repeated_keys(keys, rows), pa.array(values.reshape(-1))],
        fields=[map_type.key_field, map_type.item_field],
    )
    return pa.Array.from_buffers(map_type, rows, [None, _steps(rows, width).buffers()[1]], children=[entries])


def episode_id_width(num_episodes: int) -> int:
    return max(6, len(str(max(num_episodes - 1, 0))))


def batch_to_arrow(batch: EpisodeBatch, feature_ids: np.ndarray, num_actions: int, id_width: int) -> pa.Table:
    """The rows of `batch` (episode-major, without `ds`) as an Arrow table of `file_schema()`."""
    steps, users, num_features = batch.states.shape
    keep = batch.alive.T  # (B, T) episode-major
    rows = int(keep.sum())
    if rows * max(num_features, num_actions, 8) >= 2**31:  # Arrow's int32 list offsets (and string bytes)
        raise ValueError(f"{rows:,} rows x {max(num_features, num_actions)} values do not fit one part file; "
                         "lower logging.batch_size")
    seq = np.broadcast_to(np.arange(steps, dtype=np.int64), (users, steps))[keep]  # (R,)
    episode = np.broadcast_to(np.arange(users, dtype=np.int64)[:, None], (users, steps))[keep]  # (R,)

    every_step = rows == steps * users  # the common case: a plain transpose, cheaper than a masked gather

    def rows_of(values: np.ndarray) -> np.ndarray:  # (T, B, ...) -> (R, ...)
        by_episode = np.swapaxes(values, 0, 1)  # (B, T, ...)
        if every_step:
            return by_episode.reshape(rows, *values.shape[2:])
        return by_episode[keep]

    states = rows_of(batch.states).astype(np.float32, copy=False)  # (R, F)
    state_map = map_array(STATE_MAP, tuple(int(i) for i in feature_ids), states)
    action_names = tuple(str(i) for i in range(num_actions))
    possible = pa.ListArray.from_arrays(
        _steps(rows, num_actions), repeated_strings(action_names, rows), type=ACTION_LIST
    )
    metric_names = tuple(sorted(batch.metrics))
    metric_values = np.stack([rows_of(batch.metrics[m]) for m in metric_names], axis=1)  # (R, M)
    metrics = map_array(METRICS_MAP, metric_names, metric_values.astype(np.float64, copy=False))
    arrays = [
        numbered_strings("e", episode + batch.first_episode, id_width),
        pa.array(seq),
        state_map,
        string_array(rows_of(batch.actions), list(action_names)),
        pa.array(rows_of(batch.propensities).astype(np.float64, copy=False)),
        pa.array(rows_of(batch.rewards).astype(np.float64, copy=False)),
        possible,
        metrics,
    ]
    return pa.Table.from_arrays(arrays, schema=file_schema())


def partition_dir(table_dir: str | Path, ds: str) -> Path:
    return Path(table_dir) / f"ds={ds}"


def write_part(table: pa.Table, table_dir: str | Path, ds: str, part: int) -> Path:
    """Write one part file of the `ds` partition; returns its path."""
    directory = partition_dir(table_dir, ds)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"part-{part:05d}.parquet"
    pq.write_table(table, path, row_group_size=ROW_GROUP_SIZE, **PARQUET_OPTIONS)
    return path


def mdp_dataset(table_dir: str | Path) -> pads.Dataset:
    """The mdp table as a pyarrow dataset, `ds` read from the directory names as a string."""
    if not Path(table_dir).is_dir():
        raise FileNotFoundError(f"{table_dir}: no mdp table here; workflow.offline_gym writes it")
    return pads.dataset(str(table_dir), format="parquet", partitioning=DS_PARTITIONING)


def check_written(table_dir: str | Path) -> None:
    """Raise schema.SchemaError naming the column if the table on disk does not match MDP exactly."""
    MDP.check_arrow(mdp_dataset(table_dir).schema, allow_extra=False)


def read_mdp(table_dir: str | Path) -> pa.Table:
    """Read a whole mdp table (columns in MDP order), checked against the declared schema."""
    table = mdp_dataset(table_dir).to_table()
    MDP.check_arrow(table.schema, allow_extra=False)
    return table.select(MDP.names)


def clear_caches() -> None:
    """Free the cached constant arrays (they are as large as a batch)."""
    for cached in (repeated_strings, _steps, _repeated_keys):
        cached.cache_clear()
