"""Both training-table readers: same rows, disjoint covering shards, seeded order, clear data errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from reagent_recsys.data.loaders import (
    COLUMNS,
    DataError,
    LoaderOptions,
    TrainingBatch,
    make_loader,
    read_table_metadata,
)
from reagent_recsys.data.synthetic import arrays_to_table, synthetic_arrays, write_synthetic_training_table
from reagent_recsys.schema import TRAINING, SchemaError

ROWS = 3000


@pytest.fixture(scope="module")
def table_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tt") / "train"
    write_synthetic_training_table(path, ROWS, num_features=6, num_actions=5, files=3, row_group_size=300)
    return path


def rows_of(batches: list[TrainingBatch]) -> dict[str, np.ndarray]:
    """All rows, every column, sorted by (mdp_key, sequence_number)."""
    cols = {k: np.concatenate([getattr(b, k).numpy() for b in batches]) for k in COLUMNS}
    order = np.lexsort((cols["sequence_number"], cols["mdp_key"]))
    return {k: v[order] for k, v in cols.items()}


def keys_of(batches: list[TrainingBatch]) -> np.ndarray:
    return np.concatenate([(b.mdp_key * 1000 + b.sequence_number).numpy() for b in batches])


def test_batch_shapes_and_dtypes(table_dir):
    batch = next(iter(make_loader("arrow", table_dir, LoaderOptions(batch_size=64))))
    assert batch.state.shape == (64, 6) and batch.state.dtype == torch.float32
    assert batch.possible_actions_mask.shape == (64, 5) and batch.possible_actions_mask.dtype == torch.bool
    assert batch.state_presence.dtype == torch.bool and batch.not_terminal.dtype == torch.bool
    assert batch.action.dtype == torch.int64 and batch.action.shape == (64,)
    assert batch.reward.dtype == torch.float32


def test_both_loaders_yield_the_same_rows_as_the_table(table_dir):
    direct = pq.read_table(table_dir).to_pydict()
    expected_state = np.asarray(direct["state"], dtype=np.float32)
    order = np.lexsort((direct["sequence_number"], direct["mdp_key"]))
    results = {}
    for kind in ("arrow", "petastorm"):
        batches = list(make_loader(kind, table_dir, LoaderOptions(batch_size=128, shuffle_buffer=700, seed=1)))
        assert all(len(b) == 128 for b in batches[:-1])
        results[kind] = rows_of(batches)
        assert len(results[kind]["action"]) == ROWS
        np.testing.assert_array_equal(results[kind]["state"], expected_state[order])
    for name in COLUMNS:
        np.testing.assert_array_equal(results["arrow"][name], results["petastorm"][name], err_msg=name)


@pytest.mark.parametrize("kind", ["arrow", "petastorm"])
def test_shards_are_disjoint_and_cover_everything(table_dir, kind):
    world = 3
    shards = [keys_of(list(make_loader(kind, table_dir, LoaderOptions(batch_size=100, rank=r, world_size=world))))
              for r in range(world)]
    assert all(len(s) > 0 for s in shards)
    everything = np.concatenate(shards)
    assert len(everything) == ROWS and len(np.unique(everything)) == ROWS
    loader = make_loader(kind, table_dir, LoaderOptions(rank=1, world_size=world))
    assert loader.num_rows == len(shards[1])


def test_arrow_and_petastorm_agree_on_shards(table_dir):
    for rank in range(2):
        options = LoaderOptions(batch_size=100, rank=rank, world_size=2)
        a = np.sort(keys_of(list(make_loader("arrow", table_dir, options))))
        p = np.sort(keys_of(list(make_loader("petastorm", table_dir, options))))
        np.testing.assert_array_equal(a, p)


def test_order_is_seeded_per_epoch(table_dir):
    loader = make_loader("arrow", table_dir, LoaderOptions(batch_size=256, shuffle_buffer=1000, seed=5))
    first = keys_of(list(loader.epoch(0)))
    again = keys_of(list(make_loader("arrow", table_dir, LoaderOptions(batch_size=256, shuffle_buffer=1000,
                                                                          seed=5)).epoch(0)))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, keys_of(list(loader.epoch(1))))
    assert not np.array_equal(first, np.sort(first))  # shuffled at all


def test_cached_epochs_equal_decoded_ones(table_dir):
    options = dict(batch_size=256, shuffle_buffer=1000, seed=2)
    cached = make_loader("arrow", table_dir, LoaderOptions(cache_rows=ROWS, **options))
    plain = make_loader("arrow", table_dir, LoaderOptions(cache_rows=ROWS - 1, **options))
    assert plain.cache is None
    for epoch in range(3):
        a, b = list(cached.epoch(epoch)), list(plain.epoch(epoch))
        for name in COLUMNS:
            torch.testing.assert_close(torch.cat([getattr(x, name) for x in a]),
                                       torch.cat([getattr(x, name) for x in b]), msg=name)
    assert len(cached.cache) == len(cached.units) == 12


def test_no_shuffle_keeps_table_order(table_dir):
    loader = make_loader("arrow", table_dir, LoaderOptions(batch_size=500, shuffle=False, shuffle_buffer=0))
    direct = pq.read_table(table_dir, columns=["mdp_key", "sequence_number"]).to_pydict()
    expected = np.asarray(direct["mdp_key"]) * 1000 + np.asarray(direct["sequence_number"])
    np.testing.assert_array_equal(keys_of(list(loader)), expected)


def test_drop_last(table_dir):
    batches = list(make_loader("arrow", table_dir, LoaderOptions(batch_size=700, drop_last=True)))
    assert [len(b) for b in batches] == [700] * (ROWS // 700)


def test_manifest_is_read(table_dir):
    meta = read_table_metadata(table_dir)
    assert meta["feature_ids"] == [1, 2, 3, 4, 5, 6] and len(meta["action_names"]) == 5


def _write(path: Path, table: pa.Table) -> Path:
    path.mkdir()
    pq.write_table(table, path / "part-0.parquet")
    return path


def test_missing_column_is_named(tmp_path):
    table = arrays_to_table(synthetic_arrays(50, 3, 4)).drop(["reward"])
    with pytest.raises(SchemaError, match="'reward'"):
        make_loader("arrow", _write(tmp_path / "t", table))


def test_ragged_arrays_are_reported(tmp_path):
    arrays = synthetic_arrays(50, 3, 4)
    table = arrays_to_table(arrays)
    ragged = [list(r) for r in arrays["state"]]
    ragged[7] = ragged[7][:2]
    table = table.set_column(TRAINING.names.index("state"), "state", pa.array(ragged, pa.list_(pa.float32())))
    loader = make_loader("arrow", _write(tmp_path / "t", table))
    with pytest.raises(DataError, match=r"fixed-length arrays.*'state' by 1 rows.*\[7\]"):
        list(loader)


def test_impossible_logged_action_is_reported(tmp_path):
    arrays = synthetic_arrays(50, 3, 4)
    arrays["possible_actions_mask"][[3, 9], arrays["action"][[3, 9]]] = 0
    loader = make_loader("arrow", _write(tmp_path / "t", arrays_to_table(arrays)))
    with pytest.raises(DataError, match=r"logged action is possible.*2 rows.*\[3, 9\]"):
        list(loader)


def test_more_processes_than_row_groups_is_reported(table_dir):
    with pytest.raises(DataError, match="12 row groups cannot be shared by 13 processes"):
        make_loader("arrow", table_dir, LoaderOptions(rank=12, world_size=13))


def test_bad_options():
    with pytest.raises(ValueError, match="rank"):
        LoaderOptions(rank=2, world_size=2)
    with pytest.raises(ValueError, match="training.loader"):
        make_loader("csv", ".")


def test_prefetch_passes_items_errors_and_stops_with_the_consumer():
    import threading
    import time

    from reagent_recsys.data.loaders import prefetch

    assert list(prefetch(iter(range(50)), 3)) == list(range(50))

    def failing():
        yield 1
        raise DataError("bad row group")

    with pytest.raises(DataError, match="bad row group"):
        list(prefetch(failing(), 2))
    early = prefetch(iter(range(10**6)), 2)
    assert next(early) == 0
    early.close()
    deadline = time.monotonic() + 5
    while any(t.name == "training-table-prefetch" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(t.name == "training-table-prefetch" for t in threading.enumerate())
