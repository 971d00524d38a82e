"""The timeline operator on small hand-built mdp tables with outputs worked out by hand (real Spark, real Parquet)."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preprocessing import timeline_job
from preprocessing.timeline import DataValidationError
from preprocessing.timeline_job import run_timeline
from reagent_recsys.config import validate_config
from reagent_recsys.schema import MDP, TIMELINE, SchemaError

ROOT = Path(__file__).resolve().parents[2]


def step(mdp_id, seq, reward=1.0, action="0", prob=0.5, possible=("0", "1"), ds="2026-01-01", **overrides):
    row = {
        "ds": ds,
        "mdp_id": mdp_id,
        "sequence_number": seq,
        "state_features": [(1, float(seq)), (7, 0.5)],
        "action": action,
        "action_probability": prob,
        "reward": reward,
        "possible_actions": list(possible),
        "metrics": [("click", 1.0)],
    }
    row.update(overrides)
    return row


def write_mdp(root: Path, rows: list[dict], schema: pa.Schema | None = None) -> Path:
    """The mdp table as a logging stage writes it: Parquet partitioned by ds (nullable columns, as logs may be)."""
    schema = schema or pa.schema([f.with_nullable(True) for f in MDP.arrow()])
    table = pa.Table.from_pylist(rows, schema=schema)
    path = root / "mdp"
    pq.write_to_dataset(table, str(path), partition_cols=["ds"] if "ds" in table.column_names and rows else None)
    return path


def make_config(root: Path, **timeline):
    training = {"gamma": timeline["gamma"]} if "gamma" in timeline else {}  # one discount: they must agree
    return validate_config({"output_dir": str(root), "timeline": {"eval_fraction": 0.0, **timeline},
                            "training": training})


def read_split(spark, root: Path, split: str) -> list[dict]:
    rows = [r.asDict() for r in spark.read.parquet(str(root / "timeline" / split)).collect()]
    return sorted(rows, key=lambda r: (r["mdp_id"], r["sequence_number"]))


def manifest(root: Path) -> dict:
    return json.loads((root / "timeline" / "_manifest.json").read_text())


def run(spark, root: Path, rows: list[dict], **timeline):
    write_mdp(root, rows)
    summary = run_timeline(spark, make_config(root, **timeline))
    return summary, read_split(spark, root, "train")


def test_one_step_shuffled_input_with_gaps_and_a_one_step_episode(spark, tmp_path):
    rows = [step("a", 2, 1.0), step("a", 5, 2.0, action="1"), step("a", 6, 4.0), step("b", 9, 8.0)]
    random.Random(0).shuffle(rows)
    summary, out = run(spark, tmp_path, rows)
    assert [(r["mdp_id"], r["sequence_number"], r["sequence_number_ordinal"]) for r in out] == [
        ("a", 2, 1), ("a", 5, 2), ("a", 6, 3), ("b", 9, 1)
    ]
    first = out[0]
    assert first["next_state_features"] == {1: 5.0, 7: 0.5}
    assert (first["next_action"], first["possible_next_actions"]) == ("1", ["0", "1"])
    assert (first["time_diff"], first["time_since_first"], first["not_terminal"]) == (3, 0, True)
    assert (first["n_step_reward"], first["n_steps"]) == (1.0, 1)
    assert (out[1]["time_diff"], out[1]["time_since_first"], out[1]["next_action"]) == (1, 3, "0")
    for last in (out[2], out[3]):  # kept, reward counts, no next state
        assert last["not_terminal"] is False
        assert (last["next_state_features"], last["next_action"], last["possible_next_actions"]) == ({}, "", [])
        assert (last["time_diff"], last["n_steps"], last["n_step_reward"]) == (1, 1, last["reward"])
    assert out[3]["reward"] == 8.0 and out[3]["time_since_first"] == 0
    assert summary["rows_in"] == 4 and summary["rows_out"] == {"train": 4, "eval": 0}
    TIMELINE.check_spark(spark.read.parquet(str(tmp_path / "timeline" / "train")).schema, allow_extra=False)
    TIMELINE.check_spark(spark.read.parquet(str(tmp_path / "timeline" / "eval")).schema, allow_extra=False)


def test_n_step_rewards_by_hand(spark, tmp_path):
    rows = [step("e", s, r) for s, r in zip((10, 11, 13, 14), (1.0, 2.0, 4.0, 8.0), strict=True)]
    _, out = run(spark, tmp_path, rows[::-1], multi_steps=3, gamma=0.5)
    # t=0: 1 + .5*2 + .25*4 = 3, next = step 3 (seq 14); the last three steps run out of steps: terminal.
    assert [r["n_step_reward"] for r in out] == pytest.approx([3.0, 6.0, 8.0, 8.0])
    assert [r["n_steps"] for r in out] == [3, 3, 2, 1]
    assert [r["not_terminal"] for r in out] == [True, False, False, False]
    assert out[0]["next_state_features"] == {1: 14.0, 7: 0.5} and out[0]["time_diff"] == 4
    assert [r["reward"] for r in out] == [1.0, 2.0, 4.0, 8.0]


def test_manifest_balances_and_records_hashes(spark, tmp_path):
    (tmp_path / "mdp").mkdir()
    (tmp_path / "mdp" / "_manifest.json").write_text(json.dumps({"config_hash": "abc123"}))
    rows = [step(f"m{i}", s) for i in range(30) for s in range(3)]
    run(spark, tmp_path, rows, eval_fraction=0.5)
    m = manifest(tmp_path)
    assert m["config_hash"] == make_config(tmp_path, eval_fraction=0.5).section_hash("timeline")
    assert m["input"]["config_hash"] == "abc123" and len(m["input"]["manifest_sha256"]) == 16
    assert m["rows_in"] == 90 == sum(m["rows_out"].values()) + sum(m["rows_dropped"].values())
    for split in ("train", "eval"):
        s = m["splits"][split]
        assert s["rows_in"] == s["rows_out"] + sum(s["rows_dropped"].values())
        assert s["rows_out"] == len(read_split(spark, tmp_path, split)) > 0
    assert "pyspark" in m["package_versions"]


BAD_ROWS = {
    "null_required": (step("x", 1, state_features=None), "column state_features is null"),
    "duplicate_step": (step("a", 1, reward=5.0), "column (mdp_id, sequence_number) appears more than once"),
    "non_finite_reward": (step("x", 1, reward=float("nan")), "column reward"),
    "action_probability_out_of_range": (step("x", 1, prob=1.5), "column action_probability"),
    "action_not_possible": (step("x", 1, action="7"), "column action"),
}


@pytest.mark.parametrize("rule", sorted(BAD_ROWS))
def test_each_rule_fails_before_writing_naming_rule_column_count_and_examples(spark, tmp_path, rule):
    bad, column = BAD_ROWS[rule]
    rows = [step("a", 1), step("a", 2), bad, {**bad, "sequence_number": 3} if rule != "duplicate_step" else bad]
    write_mdp(tmp_path, rows)
    with pytest.raises(DataValidationError) as info:
        run_timeline(spark, make_config(tmp_path))
    message = str(info.value)
    expected_count = 3 if rule == "duplicate_step" else 2  # both copies of the duplicated step count
    assert f"rule {rule}: {column}" in message
    assert f"in {expected_count} rows, e.g. (mdp_id=" in message
    assert "\n" not in message
    assert not (tmp_path / "timeline").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["mdp"]


@pytest.mark.parametrize(
    "drop, cast, expected",
    [
        ("reward", None, "column 'reward': missing (expected double)"),
        (None, ("sequence_number", pa.string()), "column 'sequence_number': expected bigint, got string"),
    ],
)
def test_missing_column_or_wrong_type_names_column_and_expected_type(spark, tmp_path, drop, cast, expected):
    rows = [step("a", 1), step("a", 2)]
    table = pa.Table.from_pylist(rows, schema=MDP.arrow())
    if drop:
        table = table.drop([drop])
    if cast:
        table = table.set_column(table.schema.get_field_index(cast[0]), cast[0], table[cast[0]].cast(cast[1]))
    pq.write_to_dataset(table, str(tmp_path / "mdp"), partition_cols=["ds"])
    with pytest.raises(SchemaError, match=r"mdp table: " + expected.replace("(", r"\(").replace(")", r"\)")):
        run_timeline(spark, make_config(tmp_path))
    assert not (tmp_path / "timeline").exists()


def test_empty_input_and_empty_ds_range_are_errors(spark, tmp_path):
    pq.write_table(pa.Table.from_pylist([], schema=MDP.arrow()), str(tmp_path / "mdp.parquet"))
    (tmp_path / "mdp").mkdir()
    (tmp_path / "mdp.parquet").rename(tmp_path / "mdp" / "part-0.parquet")
    with pytest.raises(DataValidationError, match=r"rule empty_input: input table .*mdp has 0 rows$"):
        run_timeline(spark, make_config(tmp_path))
    other = tmp_path / "other"
    write_mdp(other, [step("a", 1)])
    with pytest.raises(DataValidationError, match=r"has 0 rows within ds \[2027-01-01, \+inf\]"):
        run_timeline(spark, make_config(other, ds_start="2027-01-01"))
    with pytest.raises(DataValidationError, match="path does not exist"):
        run_timeline(spark, make_config(tmp_path / "nowhere"))


def test_quarantine_writes_rejects_with_reasons_and_counts_them(spark, tmp_path):
    rows = [step("a", 1), step("a", 2), step("a", 3)] + [bad for bad, _ in BAD_ROWS.values()]
    rows[-1] = {**rows[-1], "mdp_id": "y"}  # keep the NaN/prob/action rows in distinct episodes
    rows[-2] = {**rows[-2], "mdp_id": "z"}
    rows[-3] = {**rows[-3], "mdp_id": "w"}
    rows.append(step("ok", 1))
    summary, out = run(spark, tmp_path, rows, on_invalid="quarantine")
    rejects = spark.read.parquet(str(tmp_path / "timeline" / "rejects")).collect()
    reasons = sorted(r["reason"] for r in rejects)
    assert reasons == sorted(["null_required", "duplicate_step", "duplicate_step", "non_finite_reward",
                              "action_probability_out_of_range", "action_not_possible",
                              "quarantined_episode", "quarantined_episode"])  # a/2, a/3 go with episode a
    assert set(MDP.names) <= set(rejects[0].asDict())
    assert [(r["mdp_id"], r["sequence_number"]) for r in out] == [("ok", 1)]  # a/1 was duplicated: a is dropped
    m = manifest(tmp_path)
    assert {k: v for k, v in m["rows_dropped"].items() if v} == {
        "null_required": 1, "duplicate_step": 2, "non_finite_reward": 1,
        "action_probability_out_of_range": 1, "action_not_possible": 1, "quarantined_episode": 2,
    }
    assert m["quarantine"] == {"mode": "drop_episode", "episodes": 5, "example_mdp_ids": ["a", "w", "x", "y", "z"],
                               "rows_invalid": 6, "rows_dropped_with_episode": 2, "rows_cut_tail": 0}
    assert summary["rows_in"] == 9 == 1 + 6 + 2 and summary["quarantined_episodes"] == 5


def _episode_with_a_bad_step() -> list[dict]:
    """a: steps 1..6 with a NaN reward at step 4; b: 3 clean steps; c: null action at its first step."""
    return ([step("a", s, reward=float("nan") if s == 4 else float(s)) for s in range(1, 7)]
            + [step("b", s) for s in range(1, 4)] + [step("c", 1, action=None), step("c", 2)])


def test_quarantine_never_splices_an_episode_drop(spark, tmp_path):
    """Issue 12.7: quarantining step 4 must not make step 3's next state step 5."""
    _, out = run(spark, tmp_path, _episode_with_a_bad_step(), on_invalid="quarantine", quarantine="drop_episode")
    assert [(r["mdp_id"], r["sequence_number"]) for r in out] == [("b", 1), ("b", 2), ("b", 3)]
    q = manifest(tmp_path)["quarantine"]
    assert (q["episodes"], q["example_mdp_ids"], q["rows_dropped_with_episode"]) == (2, ["a", "c"], 6)


@pytest.mark.parametrize("multi_steps", [1, 2])
def test_quarantine_cut_keeps_whole_transitions_before_the_bad_step(spark, tmp_path, multi_steps):
    _, out = run(spark, tmp_path, _episode_with_a_bad_step(), on_invalid="quarantine", quarantine="cut_episode",
                 multi_steps=multi_steps, gamma=0.5)
    a = [r for r in out if r["mdp_id"] == "a"]
    if multi_steps == 1:  # steps 1, 2 (step 3 is only step 2's next state)
        assert [(r["sequence_number"], r["time_diff"], r["not_terminal"]) for r in a] == [(1, 1, True), (2, 1, True)]
        assert [r["n_step_reward"] for r in a] == [1.0, 2.0]
    else:  # step 1 -> 3: r1 + 0.5 r2; steps 2 and 3 would need the NaN reward of step 4
        assert [(r["sequence_number"], r["time_diff"], r["n_steps"]) for r in a] == [(1, 2, 2)]
        assert a[0]["n_step_reward"] == 1.0 + 0.5 * 2.0
    assert all(r["time_diff"] <= multi_steps for r in out)
    assert not [r for r in out if r["mdp_id"] == "c"]  # cut at its first step
    m = manifest(tmp_path)
    dropped = {k: v for k, v in m["rows_dropped"].items() if v}
    assert dropped == {"non_finite_reward": 1, "null_required": 1, "quarantined_episode": 3,
                       "quarantine_cut_tail": multi_steps}
    assert m["rows_in"] == 11 == sum(m["rows_out"].values()) + sum(m["rows_dropped"].values())
    assert m["quarantine"]["mode"] == "cut_episode" and m["quarantine"]["rows_cut_tail"] == multi_steps


def test_split_is_stable_disjoint_and_keeps_episodes_whole(spark, tmp_path):
    rows = [step(f"user-{i}", s) for i in range(200) for s in range(3)]
    run(spark, tmp_path, rows, eval_fraction=0.3)
    train, eval_ = read_split(spark, tmp_path, "train"), read_split(spark, tmp_path, "eval")
    train_ids, eval_ids = {r["mdp_id"] for r in train}, {r["mdp_id"] for r in eval_}
    assert not train_ids & eval_ids and len(train_ids | eval_ids) == 200
    assert len(train) == 3 * len(train_ids) and len(eval_) == 3 * len(eval_ids)
    assert 30 <= len(eval_ids) <= 90
    # Same mdp_id, same side, whatever else is in the table (here: only the odd users, another order).
    subset = tmp_path / "subset"
    run(spark, subset, [r for r in rows[::-1] if int(r["mdp_id"].split("-")[1]) % 2], eval_fraction=0.3)
    sub_eval = {r["mdp_id"] for r in read_split(spark, subset, "eval")}
    assert sub_eval == {m for m in eval_ids if int(m.split("-")[1]) % 2}
    # The same input gives the same table.
    again = tmp_path / "again"
    run(spark, again, rows, eval_fraction=0.3)
    assert read_split(spark, again, "eval") == eval_ and read_split(spark, again, "train") == train


def test_ds_range_reads_only_the_selected_partitions(spark, tmp_path):
    rows = [step("a", 1, ds="2026-01-01"), step("a", 2, ds="2026-01-02"), step("b", 1, ds="2026-01-02"),
            step("c", 1, ds="2026-01-03")]
    summary, out = run(spark, tmp_path, rows, ds_start="2026-01-02", ds_end="2026-01-02")
    assert [(r["mdp_id"], r["sequence_number"], r["sequence_number_ordinal"]) for r in out] == [
        ("a", 2, 1), ("b", 1, 1)
    ]
    assert summary["rows_in"] == 2


def test_time_window_drops_late_steps_and_keeps_real_next_states(spark, tmp_path):
    rows = [step("a", s) for s in (0, 1, 2, 5, 6)] + [step("b", s) for s in (3, 4)]
    summary, out = run(spark, tmp_path, rows, time_window=2)
    assert [(r["mdp_id"], r["sequence_number"]) for r in out] == [("a", 0), ("a", 1), ("b", 3), ("b", 4)]
    a1 = out[1]
    assert a1["not_terminal"] is True and a1["next_state_features"][1] == 2.0  # the cut is not a terminal
    assert summary["rows_dropped"] == {"time_window": 3}
    assert manifest(tmp_path)["splits"]["train"]["rows_dropped"]["time_window"] == 3


def test_outlier_filter_drops_long_episodes_and_reports_them(spark, tmp_path):
    rows = [step(f"len{n:02d}", s) for n in range(1, 11) for s in range(n)]  # lengths 1..10
    summary, out = run(spark, tmp_path, rows, outlier_episode_length_percentile=0.5)
    m = manifest(tmp_path)
    assert m["outlier_episode_length_threshold"] == 5.5
    assert {r["mdp_id"] for r in out} == {f"len{n:02d}" for n in range(1, 6)}
    assert summary["rows_dropped"] == {"outlier_episode_length": 6 + 7 + 8 + 9 + 10}
    assert m["splits"]["train"]["episodes_out"] == 5 and len(out) == 15


def test_a_failed_write_leaves_the_previous_timeline_and_no_partial_output(spark, tmp_path, monkeypatch):
    run(spark, tmp_path, [step("a", 1), step("a", 2)])
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "timeline").rglob("*"))

    def crash(*args, **kwargs):
        raise OSError("disk full")

    write_mdp(tmp_path / "new", [step("b", 1)])
    monkeypatch.setattr(timeline_job, "write_manifest", crash)  # fail after both splits are written
    config = make_config(tmp_path, input_path=str(tmp_path / "new" / "mdp"))
    with pytest.raises(OSError, match="disk full"):
        run_timeline(spark, config)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "timeline").rglob("*")) == before
    assert [r["mdp_id"] for r in read_split(spark, tmp_path, "train")] == ["a", "a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mdp", "new", "timeline"]  # no temporary siblings
    monkeypatch.undo()
    run_timeline(spark, config)  # and a good run replaces it whole
    assert [r["mdp_id"] for r in read_split(spark, tmp_path, "train")] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mdp", "new", "timeline"]


def _cli(config_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "workflow" / "cli.py"), "run", "workflow.timeline_operator", str(config_path),
         "--set", "spark.master=local[1]", "--json"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )


@pytest.mark.slow
def test_cli_runs_on_a_tiny_table_and_fails_with_one_clear_line(tmp_path):
    good, bad = tmp_path / "good", tmp_path / "bad"
    write_mdp(good, [step("a", 1), step("a", 2)])
    write_mdp(bad, [step("a", 1), step("a", 2, reward=float("inf"))])
    for root in (good, bad):
        (root / "run.yaml").write_text(f"output_dir: {root}\ntimeline:\n  eval_fraction: 0.0\n")
    ok = _cli(good / "run.yaml")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["result"]["rows_in"] == 2 and (good / "timeline" / "train").is_dir()
    failed = _cli(bad / "run.yaml")
    assert failed.returncode == 1
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, failed.stderr
    assert "rule non_finite_reward: column reward is null, NaN or infinite in 1 rows" in errors[0]
    assert "Traceback" not in failed.stderr and not (bad / "timeline").exists()


def test_ds_partition_values_stay_strings_exactly_as_written(spark, tmp_path):
    from preprocessing.io import read_parquet_table

    write_mdp(tmp_path, [step("a", 1, ds="0101"), step("a", 2, ds="0102")])
    assert spark.read.parquet(str(tmp_path / "mdp")).schema["ds"].dataType.simpleString() == "int"  # the trap
    df = read_parquet_table(spark, str(tmp_path / "mdp"))
    MDP.check_spark(df.schema)
    assert sorted(r["ds"] for r in df.select("ds").collect()) == ["0101", "0102"]
