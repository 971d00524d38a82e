"""The mdp table writer: Arrow arrays from buffers, episodes of different lengths, schema checks on disk."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reagent_recsys.mdp_writer import (
    EpisodeBatch,
    batch_to_arrow,
    check_written,
    clear_caches,
    numbered_strings,
    read_mdp,
    repeated_strings,
    string_array,
    write_part,
)
from reagent_recsys.schema import MDP, SchemaError


def test_string_builders_match_python():
    codes = np.array([3, 0, 10, 10, 2])
    names = [str(i) for i in range(11)]
    assert string_array(codes, names).to_pylist() == ["3", "0", "10", "10", "2"]
    assert repeated_strings(("click", "a", ""), 2).to_pylist() == ["click", "a", "", "click", "a", ""]
    assert numbered_strings("e", np.array([0, 7, 123456]), 6).to_pylist() == ["e000000", "e000007", "e123456"]
    clear_caches()


def test_episodes_of_different_lengths_become_contiguous_rows(tmp_path):
    steps, users = 4, 3
    lengths = np.array([4, 1, 3])  # episode b lasts lengths[b] steps
    alive = np.arange(steps)[:, None] < lengths[None, :]  # (T, B)
    t, b = np.meshgrid(np.arange(steps), np.arange(users), indexing="ij")  # (T, B)
    states = np.stack([t * 10 + b, -b], axis=-1).astype(np.float32)  # (T, B, F)
    batch = EpisodeBatch(
        first_episode=5, states=states, actions=(t + b) % 3, propensities=np.full((steps, users), 0.5),
        rewards=(100 * b + t).astype(np.float64), metrics={"click": np.ones((steps, users)), "b": b * 1.0},
        alive=alive,
    )
    table = batch_to_arrow(batch, np.array([7, 9]), num_actions=3, id_width=6)
    assert table.num_rows == batch.num_rows == lengths.sum()
    rows = table.to_pydict()
    assert rows["mdp_id"] == ["e000005"] * 4 + ["e000006"] + ["e000007"] * 3
    assert rows["sequence_number"] == [0, 1, 2, 3, 0, 0, 1, 2]
    assert rows["reward"] == [0, 1, 2, 3, 100, 200, 201, 202]
    assert rows["state_features"][6] == [(7, 12.0), (9, -2.0)]  # episode 2, step 1
    assert rows["action"] == ["0", "1", "2", "0", "1", "2", "0", "1"]
    assert rows["possible_actions"][0] == ["0", "1", "2"]
    assert rows["metrics"][4] == [("b", 1.0), ("click", 1.0)]
    write_part(table, tmp_path, "2026-02-03", 0)
    back = read_mdp(tmp_path)
    MDP.check_arrow(back.schema, allow_extra=False)
    assert back.column("ds").to_pylist() == ["2026-02-03"] * 8
    assert back.drop(["ds"]).to_pydict() == rows
    clear_caches()


def test_check_written_names_the_bad_column(tmp_path):
    part = tmp_path / "ds=2026-01-01"
    part.mkdir()
    good = {c.name: pa.array([], type=c.type) for c in MDP.columns if c.name != "ds"}
    bad = dict(good, action=pa.array([], type=pa.int64()))
    del bad["reward"]
    pq.write_table(pa.table(bad), part / "part-00000.parquet")
    with pytest.raises(SchemaError, match=r"mdp table: column 'action': expected string, got int64; "
                                          r"column 'reward': missing"):
        check_written(tmp_path)


def test_reading_a_missing_table_says_which_stage_writes_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no mdp table.*workflow\.offline_gym"):
        read_mdp(tmp_path / "nope")
