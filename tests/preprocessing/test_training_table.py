"""The dense training table on a hand-built timeline, and both workflows end to end (Spark, pyarrow, petastorm)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as ds
import pytest

from preprocessing.timeline import DataValidationError
from preprocessing.training_table import (
    build_training_table,
    check_actions,
    collect_action_names,
    sort_action_names,
)
from reagent_recsys.config import NormalizationConfig, PipelineConfig, SparkConfig
from reagent_recsys.normalization import NormalizationArtifact, RareFeatureWarning
from reagent_recsys.schema import FEATURES_FILE, MANIFEST_FILE, TIMELINE, TRAINING
from tests.preprocessing.test_normalization import timeline_row

FEATURE_IDS = [1, 3, 4]  # 4 never occurs; 9 occurs but is not in the artifact
ACTIONS = ["0", "1", "2", "10"]


def episode_rows() -> list[dict]:
    """e1: three steps (actions "2", "10", "1"), feature 3 missing at step 1; e2: one terminal step."""
    s0, s1, s2 = {1: 0.5, 3: 2.0, 9: 9.5}, {1: 1.5}, {1: 2.5, 3: 1.0, 9: 8.5}
    return [
        timeline_row("e1", 10, s0, action="2", possible_actions=["0", "2", "10"], next_state_features=s1,
                     next_action="10", possible_next_actions=["10", "1"], not_terminal=True, reward=1.0,
                     n_step_reward=1.0, time_diff=2, action_probability=0.25),
        timeline_row("e1", 12, s1, action="10", possible_actions=["10", "1"], next_state_features=s2,
                     next_action="1", possible_next_actions=["1"], not_terminal=True, reward=2.0,
                     n_step_reward=2.0, time_diff=1, action_probability=0.5),
        timeline_row("e1", 13, s2, action="1", possible_actions=["1"], reward=3.0, n_step_reward=3.0,
                     action_probability=1.0),
        timeline_row("e2", 0, {3: 4.0}, action="0", possible_actions=["0", "1"], reward=-1.0,
                     n_step_reward=-1.0),
    ]


@pytest.fixture(scope="module")
def timeline(spark):
    return spark.createDataFrame(episode_rows(), TIMELINE.spark())


def test_numeric_aware_action_order():
    assert sort_action_names(["10", "2", "b", "1", "a", "2", "-3", "0.5"]) == ["-3", "0.5", "1", "2", "10", "a", "b"]


def test_collect_action_names(timeline):
    assert collect_action_names(timeline) == ACTIONS


def test_unknown_actions_are_data_errors(timeline):
    check_actions(timeline, ACTIONS)
    with pytest.raises(DataValidationError, match=r"rule known_action: .*: 2 rows mention .*examples: \['10'\]"):
        check_actions(timeline, ["0", "1", "2"])


def test_contents(timeline):
    table = build_training_table(timeline, FEATURE_IDS, ACTIONS)
    TRAINING.check_spark(table.schema, allow_extra=False)
    rows = {(r.mdp_key, r.sequence_number): r.asDict() for r in table.collect()}
    assert len(rows) == 4
    keys = sorted({k for k, _ in rows})
    assert len(keys) == 2 and all(isinstance(k, int) for k in keys)
    e1 = sorted((r for r in rows.values() if r["sequence_number"] >= 10), key=lambda r: r["sequence_number"])
    e2 = next(r for r in rows.values() if r["sequence_number"] == 0)
    assert len({r["mdp_key"] for r in e1}) == 1 and e2["mdp_key"] != e1[0]["mdp_key"]

    first, second, last = e1
    assert first["state"] == [0.5, 2.0, 0.0] and first["state_presence"] == [1, 1, 0]
    assert first["action"] == 2 and first["next_action"] == 3  # "2" -> 2, "10" -> 3
    assert first["possible_actions_mask"] == [1, 0, 1, 1]
    assert first["possible_next_actions_mask"] == [0, 1, 0, 1]
    assert first["next_state"] == [1.5, 0.0, 0.0] and first["next_state_presence"] == [1, 0, 0]
    assert (first["time_diff"], first["n_steps"], first["not_terminal"]) == (2, 1, True)
    assert first["action_probability"] == 0.25 and first["reward"] == 1.0
    assert second["action"] == 3 and second["next_action"] == 1
    assert second["state_presence"] == [1, 0, 0] and second["next_state"] == [2.5, 1.0, 0.0]
    for terminal in (last, e2):  # terminal rows: zeros, never nulls
        assert terminal["not_terminal"] is False
        assert terminal["next_state"] == [0.0] * 3 and terminal["next_state_presence"] == [0] * 3
        assert terminal["possible_next_actions_mask"] == [0] * 4 and terminal["next_action"] == 0
    assert last["action"] == 1 and last["reward"] == 3.0
    assert e2["state"] == [0.0, 4.0, 0.0] and e2["action"] == 0 and e2["possible_actions_mask"] == [1, 1, 0, 0]


def test_mdp_key_is_stable(timeline):
    first = sorted(r.mdp_key for r in build_training_table(timeline, FEATURE_IDS, ACTIONS).collect())
    again = sorted(r.mdp_key for r in build_training_table(timeline.orderBy("reward"), [3], ACTIONS).collect())
    assert first == again


def write_run(spark, root) -> PipelineConfig:
    """A run directory with timeline/{train,eval} (train: e1, e2 and 30 filler episodes; eval: 2 episodes)."""
    rng = np.random.default_rng(0)
    filler = [timeline_row(f"f{i}", 0, {1: float(rng.normal()), 3: float(rng.integers(0, 3))},
                           action=str(i % 3), possible_actions=["0", "1", "2"]) for i in range(30)]
    eval_rows = [timeline_row("v1", 0, {1: 0.1, 3: 1.0}, action="1"),
                 timeline_row("v2", 0, {1: 0.2, 7: 5.0}, action="0")]
    out = root / "out"
    for split, rows in (("train", episode_rows() + filler), ("eval", eval_rows)):
        spark.createDataFrame(rows, TIMELINE.spark()).coalesce(1).write.parquet(str(out / "timeline" / split))
    (out / "timeline" / MANIFEST_FILE).write_text(json.dumps({"rows_out": {"train": 34, "eval": 2}}))
    (out / "mdp").mkdir(parents=True)
    (out / "mdp" / FEATURES_FILE).write_text(json.dumps({"features": [{"id": 1, "name": "user.one"}]}))
    return PipelineConfig(output_dir=out, spark=SparkConfig(master="local[2]", shuffle_partitions=4,
                                                           driver_memory="1g"),
                          normalization=NormalizationConfig(quantile_k2_threshold=50.0))


@pytest.mark.slow
def test_normalization_and_training_table_jobs(spark, tmp_path):
    from petastorm import make_batch_reader

    from preprocessing.normalization_job import run_identify_normalization
    from preprocessing.training_table_job import run_training_table

    def identify_normalization(config):
        return run_identify_normalization(spark, config)

    def training_table(config):
        return run_training_table(spark, config)

    config = write_run(spark, tmp_path)
    with pytest.warns(RareFeatureWarning, match="feature 9"):
        summary = identify_normalization(config)
    assert summary["features"] == 3 and summary["types"] == {"CONTINUOUS": 2, "ENUM": 1}
    artifact = NormalizationArtifact.load(config.output_dir / "normalization.json")
    assert artifact.feature_ids == [1, 3, 9] and artifact.names == {1: "user.one"}
    assert artifact.inputs["timeline_manifest_sha256"] and artifact.inputs["config_hash"]
    first = (config.output_dir / "normalization.json").read_bytes()
    with pytest.warns(RareFeatureWarning):
        identify_normalization(config)
    assert (config.output_dir / "normalization.json").read_bytes() == first  # same input and seed, same bytes

    bad = config.model_copy(update={"training_table": config.training_table.model_copy(
        update={"action_names": ["0", "1", "2"]})})
    with pytest.raises(DataValidationError, match="known_action"):
        training_table(bad)
    assert not (config.output_dir / "training_table").exists()

    summary = training_table(config)
    out = config.output_dir / "training_table"
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["feature_ids"] == [1, 3, 9] and manifest["action_names"] == ACTIONS
    assert manifest["rows"] == {"train": 34, "eval": 2} == summary["rows"]
    assert manifest["inputs"]["normalization_sha256"] and manifest["inputs"]["timeline_manifest_sha256"]
    assert not [p for p in config.output_dir.iterdir() if p.name.startswith(".")]  # no temporary leftovers

    train = ds.dataset(out / "train", format="parquet").to_table()
    TRAINING.check_arrow(train.schema, allow_extra=False)
    assert train.num_rows == 34
    states = np.array(train.column("state").to_pylist(), dtype=np.float32)  # (N, F)
    assert states.shape == (34, 3)
    evals = ds.dataset(out / "eval", format="parquet").to_table().to_pylist()
    eval_states = np.array(sorted(r["state"] for r in evals), dtype=np.float32)
    np.testing.assert_array_equal(eval_states, np.float32([[0.1, 1.0, 0.0], [0.2, 0.0, 0.0]]))  # 7: not in artifact

    rows = 0
    with make_batch_reader(f"file://{out / 'train'}", num_epochs=1, reader_pool_type="dummy") as reader:
        for batch in reader:
            rows += len(batch.mdp_key)
            assert np.asarray(batch.state).shape[1:] == (3,)
            assert np.asarray(batch.possible_actions_mask).shape[1:] == (4,)
    assert rows == 34


def _parquet_contents(path) -> list[bytes]:
    """The bytes of every Parquet file of a directory, in file order (names carry a random job id)."""
    return [p.read_bytes() for p in sorted(path.glob("part-*.parquet"))]


def test_files_do_not_depend_on_what_ran_before(spark, tmp_path):
    """Issue 12.3: the same rows give byte-identical files, alone or after other jobs of the session."""
    from pyspark.sql import functions as F

    from preprocessing.training_table import by_key_range

    rows = (spark.range(0, 40_000, numPartitions=4)
            .select(F.xxhash64((F.col("id") / 10).cast("long")).alias("mdp_key"),
                    (F.col("id") % 10).alias("sequence_number"), F.rand(seed=1).alias("reward")))
    by_key_range(rows, 8).write.parquet(str(tmp_path / "alone"))
    for i in range(3):  # other work in the same session: more RDDs, other range-partitioned shuffles
        rows.repartitionByRange(5 + i, "reward").write.mode("overwrite").parquet(str(tmp_path / "other"))
    by_key_range(rows, 8).write.parquet(str(tmp_path / "after"))
    alone, after = _parquet_contents(tmp_path / "alone"), _parquet_contents(tmp_path / "after")
    assert len(alone) == 8 and alone == after
    table = ds.dataset(tmp_path / "alone", format="parquet")
    files = sorted(table.files)
    keys = [pq_keys(f) for f in files]
    for earlier, later in zip(keys, keys[1:], strict=False):  # contiguous, sorted key ranges in file order
        assert earlier[-1] < later[0]
    assert all(k == sorted(k) for k in keys) and sum(map(len, keys)) == 40_000
    assert min(map(len, keys)) > 40_000 / 8 * 0.8  # ranges of a uniform hash: balanced


def pq_keys(path: str) -> list[int]:
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["mdp_key"]).column("mdp_key").to_pylist()
