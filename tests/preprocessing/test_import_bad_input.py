"""Bad logs fail with one line naming the rule, the column, a count and examples, and leave nothing written;
`import.on_invalid: quarantine` writes them to <mdp>/_rejects and imports the rest. RLlib offline JSON, written
per RLlib's JsonWriter format (one SampleBatch object per line), plain and packed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from preprocessing.import_job import run_import
from preprocessing.timeline import DataValidationError
from reagent_recsys.config import validate_config
from reagent_recsys.mdp_writer import read_mdp
from reagent_recsys.schema import FEATURES_FILE
from tests.preprocessing.test_import_logs import HEADER, ROWS, config, write_csv


def with_cell(row: int, column: str, value: str) -> list[list[str]]:
    rows = [list(r) for r in ROWS]
    rows[row][HEADER.index(column)] = value
    return rows


CASES = {
    "non_numeric_feature": (with_cell(0, "age", "thirty"), {},
                            r"rule non_numeric_value: column age is not a number in 1 rows, e\.g\. \(session_id='s1' "
                            r"step='0' age='thirty'\)"),
    "propensity_missing": (with_cell(1, "propensity", ""), {},
                           r"rule propensity_out_of_range: column propensity is missing, NaN or outside \(0, 1\] "
                           r"in 1 rows"),
    "propensity_above_one": (with_cell(2, "propensity", "1.5"), {},
                             r"rule propensity_out_of_range: column propensity .* in 1 rows, e\.g\. \(session_id='s2'"),
    "duplicate_step": (with_cell(1, "step", "0"), {},
                       r"rule duplicate_step: column \(session_id, step\) appears more than once in 2 rows"),
    "unparseable_timestamp": (with_cell(3, "timestamp", "yesterday"), {},
                              r"rule unparseable_timestamp: column timestamp cannot be parsed as a time in 1 rows, "
                              r"e\.g\. .*timestamp='yesterday'"),
    "missing_column": (ROWS, {"reward_column": "gain"},
                       r"rule missing_column: .*: 1 mapped column\(s\) not in the input: 'gain' \(import\.reward_column\)"),
    "empty_input": ([], {}, r"rule empty_input: input .* has no rows"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_fails_with_one_line_and_writes_nothing(spark, tmp_path, case):
    rows, overrides, message = CASES[case]
    log = write_csv(tmp_path / "log.csv", [HEADER, *rows])
    with pytest.raises(DataValidationError, match=message) as info:
        run_import(spark, config(tmp_path, log, **overrides))
    assert "\n" not in str(info.value)
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())  # no table, no temporary left behind


def test_quarantine_writes_rejects_and_imports_the_rest(spark, tmp_path):
    rows = with_cell(0, "age", "thirty") + [["s9", "0", "2026-01-01 00:00:00", "1", "US", "0", "i1", "i1", "0",
                                             "1", "0"]]
    log = write_csv(tmp_path / "log.csv", [HEADER, *rows])
    summary = run_import(spark, config(tmp_path, log, on_invalid="quarantine"))
    assert summary["rows_in"] == 5 and summary["rows"] == 3
    assert summary["rows_rejected"] == {"non_numeric_value(age)": 1, "propensity_out_of_range": 1}
    assert sorted((r["mdp_id"], r["sequence_number"]) for r in read_mdp(tmp_path / "out" / "mdp").to_pylist()) == [
        ("s1", 1), ("s2", 0), ("s3", 0)]
    rejects = sorted(r.asDict()["reason"] for r in spark.read.parquet(str(tmp_path / "out/mdp/_rejects")).collect())
    assert rejects == ["non_numeric_value(age)", "propensity_out_of_range"]


# ----------------------------------------------------------------------------------------------- RLlib
def sample_batch(eps_id: int, t0: int, steps: int, *, logp: bool = False, done_at_end: bool = True) -> dict:
    """One SampleBatch line as RLlib's JsonWriter writes it with output_compress_columns=[] (columns as lists)."""
    obs = [[float(eps_id), 0.5 * t, -1.0] for t in range(t0, t0 + steps + 1)]
    actions = [(eps_id + t) % 3 for t in range(t0, t0 + steps)]
    batch = {
        "type": "SampleBatch",
        "obs": obs[:-1], "new_obs": obs[1:], "actions": actions, "rewards": [float(t) for t in range(t0, t0 + steps)],
        "terminateds": [done_at_end and k == steps - 1 for k in range(steps)], "truncateds": [False] * steps,
        "eps_id": [eps_id] * steps, "t": list(range(t0, t0 + steps)), "agent_index": [0] * steps,
        "unroll_id": [7] * steps, "action_dist_inputs": [[0.0, 0.0, 0.0]] * steps,
    }
    probs = [0.25 + 0.25 * (a == 0) for a in actions]
    if logp:
        batch["action_logp"] = [math.log(p) for p in probs]
    else:
        batch["action_prob"] = probs
    return batch


def rllib_config(root: Path, path: Path, **overrides):
    return validate_config({"output_dir": str(root / "out"), "import": {"format": "rllib", "path": str(path),
                                                                        **overrides}})


def test_rllib_json_becomes_the_mdp_table(spark, tmp_path):
    # Episode 1 is split over two batches (a rollout fragment boundary); episode 2 logs log-probabilities.
    lines = [sample_batch(1, 0, 2, done_at_end=False), sample_batch(1, 2, 1), sample_batch(2, 0, 2, logp=True)]
    path = tmp_path / "output-2026-01-01_worker-0_0.json"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = run_import(spark, rllib_config(tmp_path, path, rllib_num_actions=4))
    assert (summary["rows"], summary["episodes"]) == (5, 2)
    rows = sorted(read_mdp(tmp_path / "out" / "mdp").to_pylist(), key=lambda r: (r["mdp_id"], r["sequence_number"]))
    assert [(r["mdp_id"], r["sequence_number"], r["action"], r["reward"]) for r in rows] == [
        ("1", 0, "1", 0.0), ("1", 1, "2", 1.0), ("1", 2, "0", 2.0), ("2", 0, "2", 0.0), ("2", 1, "0", 1.0)]
    assert [r["action_probability"] for r in rows] == pytest.approx([0.25, 0.25, 0.5, 0.25, 0.5])
    assert rows[1]["state_features"] == [(0, 1.0), (1, 0.5), (2, -1.0)]
    assert all(r["possible_actions"] == ["0", "1", "2", "3"] for r in rows)
    features = json.loads((tmp_path / "out" / "mdp" / FEATURES_FILE).read_text())
    assert [f["name"] for f in features["features"]] == ["context.obs_0", "context.obs_1", "context.obs_2"]


def test_rllib_packed_columns_are_refused_with_the_way_out(spark, tmp_path):
    line = sample_batch(1, 0, 2)
    line["obs"] = "BCJNGGhAZAAAAAAAAAB1jAAAAIAEYGVudW1weS5jb3JlLm11bHRpYXJyYXk="  # base64 of an lz4 pickle
    path = tmp_path / "packed.json"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(DataValidationError, match=r"rule packed_columns: columns \['obs'\] .*unpickling runs code "
                       r"from the file.*output_compress_columns=\[\]") as info:
        run_import(spark, rllib_config(tmp_path, path))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out" / "mdp").exists()


def test_rllib_without_propensities_is_refused(spark, tmp_path):
    line = sample_batch(1, 0, 2)
    del line["action_prob"]
    path = tmp_path / "noprob.json"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(DataValidationError, match=r"rule missing_column: RLlib columns \['action_prob or "
                       r"action_logp'\]"):
        run_import(spark, rllib_config(tmp_path, path))
    line = sample_batch(1, 0, 2)
    line["rewards"] = [1.0]  # shorter than the other columns
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(DataValidationError, match=r"rule ragged_batch: .* in 1 SampleBatch lines"):
        run_import(spark, rllib_config(tmp_path, path))
