"""Read the dense training table (`reagent_recsys.schema.TRAINING`) as shuffled, sharded torch batches.

Two readers yield identical batches: a streaming `pyarrow.dataset` reader (the default; fastest here) and
petastorm's `make_batch_reader`. Both split the table into row groups ("units"), give unit i to rank
`i % world_size` (petastorm's own rule, so shards agree), shuffle the unit order per epoch (seeded) and feed the
rows through the same seeded shuffle buffer and batcher. pyspark is never imported.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, fields, make_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import torch

from reagent_recsys.artifacts import read_manifest
from reagent_recsys.schema import MANIFEST_FILE, TRAINING, DataRuleError, SchemaError

LIST_COLUMNS = tuple(c.name for c in TRAINING.columns if c.is_list)
_DTYPES: dict[str, np.dtype] = TRAINING.dtypes(batch=True)  # what batches carry
_SPLIT_DTYPES: dict[str, np.dtype] = TRAINING.dtypes()  # what whole splits for evaluation carry (float64 rewards)
COLUMNS = tuple(TRAINING.names)


class DataError(DataRuleError):
    """Rows that break a rule of the training table; the message names the rule, column, count and examples."""


def _batch_len(self: Any) -> int:
    return int(self.action.shape[0])


def _batch_to(self: Any, device: torch.device | str) -> Any:
    return type(self)(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


# A batch of transitions as torch tensors, one field per TRAINING column (B rows, F features, A actions; list
# columns are (B, F) or (B, A), flags are bool, rewards and propensities float32: `TRAINING.dtypes(batch=True)`).
TrainingBatch = make_dataclass("TrainingBatch", [(name, torch.Tensor) for name in COLUMNS],
                               namespace={"__len__": _batch_len, "to": _batch_to,
                                          "__doc__": "A batch of TRAINING rows as torch tensors (one field per "
                                                     "column, dtypes from TRAINING.dtypes(batch=True))."})
Chunk = dict[str, np.ndarray]


def read_table_metadata(table_dir: str | Path) -> dict:
    """The training table's manifest (`feature_ids`, `action_names`, ...): in the split directory or its parent."""
    table_dir = Path(table_dir)
    for candidate in (table_dir, table_dir.parent):
        if (candidate / MANIFEST_FILE).exists():
            manifest = read_manifest(candidate)
            missing = [k for k in ("feature_ids", "action_names") if k not in manifest]
            if missing:
                raise DataError(f"{candidate / MANIFEST_FILE}: manifest lacks {missing}")
            return manifest
    raise FileNotFoundError(f"{table_dir}: no {MANIFEST_FILE} here or in the parent; run workflow.training_table")


def _examples(bad: np.ndarray, limit: int = 3) -> list[int]:
    return np.flatnonzero(bad)[:limit].tolist()


def _check_chunk(chunk: Chunk, where: str) -> None:
    """Vectorized row rules the trainer relies on."""
    n, a = chunk["possible_actions_mask"].shape
    action = chunk["action"]
    out_of_range = (action < 0) | (action >= a)
    if out_of_range.any():
        raise DataError(f"{where}: rule 'action in [0, A={a})' broken in column 'action' by "
                        f"{int(out_of_range.sum())} rows, e.g. row offsets {_examples(out_of_range)}")
    impossible = ~chunk["possible_actions_mask"][np.arange(n), action]
    if impossible.any():
        raise DataError(f"{where}: rule 'logged action is possible' broken (column 'possible_actions_mask') by "
                        f"{int(impossible.sum())} rows, e.g. row offsets {_examples(impossible)}")


def table_to_chunk(table: pa.Table, where: str = "training table") -> Chunk:
    """Arrow table (TRAINING schema) -> dict of numpy arrays with the batch dtypes; list columns become (n, K)."""
    n = table.num_rows
    chunk: Chunk = {}
    for name in COLUMNS:
        column = table.column(name).combine_chunks()
        if column.null_count:
            raise DataError(f"{where}: rule 'no nulls' broken in column {name!r} by {column.null_count} rows, "
                            f"e.g. row offsets {_examples(column.is_null().to_numpy(zero_copy_only=False))}")
        if name in LIST_COLUMNS:
            lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
            width = int(lengths[0]) if n else 0
            ragged = lengths != width
            if ragged.any():
                raise DataError(f"{where}: rule 'fixed-length arrays' broken in column {name!r} by "
                                f"{int(ragged.sum())} rows (expected {width}), e.g. row offsets {_examples(ragged)}")
            values = column.flatten().to_numpy(zero_copy_only=False).reshape(n, width)
        else:
            values = column.to_numpy(zero_copy_only=False)
        chunk[name] = values.astype(_DTYPES[name], copy=False)
    _check_chunk(chunk, where)
    return chunk


def read_split_arrays(path: str | Path) -> Chunk:
    """A whole training-table split as writable numpy arrays (checked like every batch), with reward,
    n_step_reward and action_probability in float64 (batches carry them as float32): what evaluation reads."""
    table = pq.read_table(path)
    split = {name: np.array(values) for name, values in table_to_chunk(table, where=str(path)).items()}
    for name, dtype in _SPLIT_DTYPES.items():
        if split[name].dtype != dtype:  # batches narrow these; re-read them at full precision
            split[name] = table.column(name).to_numpy().astype(dtype)
    return split


def _take(chunk: Chunk, index: np.ndarray | slice) -> Chunk:
    return {k: v[index] for k, v in chunk.items()}


def _concat(chunks: list[Chunk]) -> Chunk:
    if len(chunks) == 1:
        return chunks[0]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def _rows(chunk: Chunk) -> int:
    return len(chunk["action"])


def _to_batch(chunk: Chunk) -> TrainingBatch:
    # Arrow's zero-copy arrays are read-only; torch wants writable memory.
    arrays = {k: v if v.flags.writeable and v.flags.c_contiguous else np.array(v) for k, v in chunk.items()}
    return TrainingBatch(**{k: torch.from_numpy(v) for k, v in arrays.items()})


def _shuffle_buffer(chunks: Iterator[Chunk], capacity: int, rng: np.random.Generator) -> Iterator[Chunk]:
    """Rows mixed through a buffer of `capacity` rows (vectorized slot swap, as tf.data's shuffle buffer does
    one row at a time): each incoming piece of n rows evicts n distinct random slots and takes their place."""
    buffer: Chunk | None = None
    filled = 0
    for chunk in chunks:
        while _rows(chunk):
            if buffer is None:
                buffer = {k: np.empty((capacity, *v.shape[1:]), v.dtype) for k, v in chunk.items()}
            if filled < capacity:  # still filling
                n = min(capacity - filled, _rows(chunk))
                for k, v in buffer.items():
                    v[filled:filled + n] = chunk[k][:n]
                filled += n
            else:
                n = min(capacity, _rows(chunk))
                slots = rng.choice(capacity, size=n, replace=False)
                yield _take(buffer, slots)
                for k, v in buffer.items():
                    v[slots] = chunk[k][:n]
            chunk = _take(chunk, slice(n, None))
    if buffer is not None:
        yield _take(buffer, rng.permutation(filled))


def _batches(chunks: Iterator[Chunk], batch_size: int, drop_last: bool) -> Iterator[TrainingBatch]:
    """Cut a stream of chunks into batches; only the < batch_size rows left over from a chunk are copied."""
    carry: list[Chunk] = []
    carried = 0
    for chunk in chunks:
        start = 0
        if carried:
            start = min(batch_size - carried, _rows(chunk))
            carry.append(_take(chunk, slice(0, start)))
            carried += start
            if carried < batch_size:
                continue
            yield _to_batch(_concat(carry))
            carry, carried = [], 0
        full_end = start + (_rows(chunk) - start) // batch_size * batch_size
        for i in range(start, full_end, batch_size):
            yield _to_batch(_take(chunk, slice(i, i + batch_size)))
        if full_end < _rows(chunk):
            carry, carried = [_take(chunk, slice(full_end, None))], _rows(chunk) - full_end
    if carried and not drop_last:
        yield _to_batch(_concat(carry))


def shuffle_and_batch(chunks: Iterator[Chunk], batch_size: int, shuffle_buffer: int,
                      rng: np.random.Generator, drop_last: bool = False) -> Iterator[TrainingBatch]:
    """Rows of `chunks` in batches of `batch_size`, mixed through a shuffle buffer of `shuffle_buffer` rows
    (0 keeps the incoming order)."""
    if shuffle_buffer:
        chunks = _shuffle_buffer(chunks, shuffle_buffer, rng)
    return _batches(chunks, batch_size, drop_last)


def prefetch(items: Iterator[Chunk], depth: int) -> Iterator[Chunk]:
    """Produce `items` in a background thread, up to `depth` ahead (Parquet decoding releases the GIL)."""
    if depth <= 0:
        yield from items
        return
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item: object) -> bool:
        """Hand over `item` unless the consumer has gone away."""
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(done)
        except BaseException as exc:  # raised again in the consumer
            put(exc)

    thread = threading.Thread(target=produce, name="training-table-prefetch", daemon=True)
    thread.start()
    try:
        while (item := box.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


@dataclass
class LoaderOptions:
    batch_size: int = 1024
    shuffle: bool = True  # shuffle the unit order each epoch
    shuffle_buffer: int = 100_000  # rows; 0 keeps the order within units
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    drop_last: bool = False
    prefetch: int = 2  # row groups decoded ahead in a background thread; 0: none
    cache_rows: int = 0  # arrow: keep the decoded shard in memory across epochs if it has at most this many rows

    def __post_init__(self) -> None:
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size={self.world_size}), got {self.rank}")


class TableLoader:
    """A training-table reader: row-group units, this rank's shard, and `epoch(e)` -> batches.

    Subclasses yield the decoded chunks of one epoch's units."""

    def __init__(self, path: str | Path, options: LoaderOptions | None = None) -> None:
        self.path = Path(path)
        self.options = options or LoaderOptions()
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: training table not found; run workflow.training_table")
        self.dataset = ds.dataset(self.path, format="parquet")
        try:
            TRAINING.check_arrow(self.dataset.schema)
        except SchemaError as exc:
            raise SchemaError(f"{self.path}: {exc}") from None
        # One unit per row group, ordered by (file, row group) as petastorm orders its pieces.
        self.units = [rg for frag in sorted(self.dataset.get_fragments(), key=lambda f: f.path)
                      for rg in frag.split_by_row_group()]
        self.shard = list(range(self.options.rank, len(self.units), self.options.world_size))
        if not self.shard:
            raise DataError(f"{self.path}: {len(self.units)} row groups cannot be shared by "
                            f"{self.options.world_size} processes (rank {self.options.rank} gets none); "
                            "write the table with more files or smaller row groups")

    @property
    def num_rows(self) -> int:
        """Rows in this rank's shard (from Parquet metadata; nothing is read)."""
        return sum(self.units[i].row_groups[0].num_rows for i in self.shard)

    def epoch_rng(self, epoch: int, stream: int) -> np.random.Generator:
        """Independent seeded streams: 0 orders the units (read ahead in a thread), 1 drives the shuffle buffer."""
        o = self.options
        return np.random.default_rng([o.seed, epoch, o.rank, stream])

    def _chunks(self, epoch: int, rng: np.random.Generator) -> Iterator[Chunk]:
        raise NotImplementedError

    def epoch(self, epoch: int) -> Iterator[TrainingBatch]:
        """The batches of one pass over this rank's shard; the order depends only on (seed, epoch, rank)."""
        o = self.options
        chunks = prefetch(self._chunks(epoch, self.epoch_rng(epoch, 0)), o.prefetch)
        return shuffle_and_batch(chunks, o.batch_size, o.shuffle_buffer, self.epoch_rng(epoch, 1), o.drop_last)

    def __iter__(self) -> Iterator[TrainingBatch]:
        return self.epoch(0)


class ArrowLoader(TableLoader):
    """Streams row groups with `pyarrow.dataset`, one at a time (memory ~ shuffle buffer + one row group).

    With `cache_rows` >= the shard's rows, the decoded row groups are kept for later epochs (decoding the list
    columns is most of the reading cost); consumers must not modify batches in place.
    """

    def __init__(self, path: str | Path, options: LoaderOptions | None = None) -> None:
        super().__init__(path, options)
        self.cache: dict[int, Chunk] | None = {} if self.num_rows <= self.options.cache_rows else None

    def _chunks(self, epoch: int, rng: np.random.Generator) -> Iterator[Chunk]:
        order = rng.permutation(self.shard) if self.options.shuffle else self.shard
        for i in map(int, order):
            chunk = self.cache.get(i) if self.cache is not None else None
            if chunk is None:
                unit = self.units[i]
                chunk = table_to_chunk(unit.to_table(columns=list(COLUMNS)),
                                       f"{unit.path} row group {unit.row_groups[0].id}")
                if self.cache is not None:
                    self.cache[i] = chunk
            yield chunk


class PetastormLoader(TableLoader):
    """petastorm's `make_batch_reader` with its own row-group sharding and seeded row-group shuffling.

    Trap: petastorm 0.13.1's "thread" reader pool silently drops row groups (measured here: 20 of 60 passes over
    a 12-row-group table came back short). The synchronous "dummy" pool is exact; read-ahead comes from
    `LoaderOptions.prefetch` instead.
    """

    def _chunks(self, epoch: int, rng: np.random.Generator) -> Iterator[Chunk]:
        from petastorm import make_batch_reader

        o = self.options
        # petastorm 0.13 calls pyarrow's deprecated legacy dataset APIs on every read.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\.")
        reader = make_batch_reader(
            self.path.resolve().as_uri(), schema_fields=list(COLUMNS), num_epochs=1,
            shuffle_row_groups=o.shuffle, seed=int(rng.integers(2**31)), cur_shard=o.rank,
            shard_count=o.world_size, reader_pool_type="dummy",
        )
        with reader:
            for part in reader:
                raw = part._asdict()
                chunk = {k: np.asarray(raw[k]).astype(_DTYPES[k], copy=False) for k in COLUMNS}
                _check_chunk(chunk, str(self.path))
                yield chunk


def make_loader(kind: str, path: str | Path, options: LoaderOptions | None = None) -> TableLoader:
    """`kind` is `arrow` or `petastorm` (config `training.loader`)."""
    loaders = {"arrow": ArrowLoader, "petastorm": PetastormLoader}
    if kind not in loaders:
        raise ValueError(f"training.loader: unknown loader {kind!r}; expected one of {sorted(loaders)}")
    return loaders[kind](path, options)
