"""timeline.split: time keeps days apart (train strictly before eval_from); the manifest reports both ranges."""

from __future__ import annotations

import pytest

from preprocessing.timeline_job import run_timeline
from reagent_recsys.config import ConfigError, validate_config
from tests.preprocessing.test_timeline import manifest, read_split, step, write_mdp


def test_time_split_trains_on_the_past_and_evaluates_on_later_days(spark, tmp_path):
    rows = [
        step("a", 0, ds="2026-01-01"), step("a", 1, ds="2026-01-01"),
        step("b", 0, ds="2026-01-02"),
        step("c", 0, ds="2026-01-02"), step("c", 1, ds="2026-01-03"),  # crosses eval_from: evaluated, whole
        step("d", 0, ds="2026-01-03"), step("d", 1, ds="2026-01-04"),
        step("e", 0, ds="2026-01-04", prob=0.0),  # invalid (quarantined): its ds still counts in the ranges
    ]
    write_mdp(tmp_path, rows)
    config = validate_config({"output_dir": str(tmp_path), "timeline": {
        "split": "time", "eval_from": "2026-01-03", "on_invalid": "quarantine"}})
    run_timeline(spark, config)
    train, evaluation = read_split(spark, tmp_path, "train"), read_split(spark, tmp_path, "eval")
    assert sorted({r["mdp_id"] for r in train}) == ["a", "b"]
    assert sorted({r["mdp_id"] for r in evaluation}) == ["c", "d"]
    assert len(train) == 3 and len(evaluation) == 4
    split = manifest(tmp_path)["split"]
    assert split["method"] == "time" and split["eval_from"] == "2026-01-03"
    assert split["ds_range"] == {"train": ["2026-01-01", "2026-01-02"], "eval": ["2026-01-02", "2026-01-04"]}
    assert split["rows_out"] == {"train": 3, "eval": 4}
    assert manifest(tmp_path)["rows_dropped"]["action_probability_out_of_range"] == 1


def test_hash_split_reports_ranges_too_and_time_split_needs_a_boundary(spark, tmp_path):
    write_mdp(tmp_path, [step("a", 0, ds="2026-01-01"), step("b", 0, ds="2026-01-05")])
    run_timeline(spark, validate_config({"output_dir": str(tmp_path), "timeline": {"eval_fraction": 0.0}}))
    split = manifest(tmp_path)["split"]
    assert split == {"method": "hash", "eval_from": None, "ds_range": {"train": ["2026-01-01", "2026-01-05"],
                     "eval": None}, "rows_out": {"train": 2, "eval": 0}}
    with pytest.raises(ConfigError, match=r"timeline: split time needs eval_from"):
        validate_config({"output_dir": "o", "timeline": {"split": "time"}})
