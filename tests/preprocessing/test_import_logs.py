"""workflow.import_logs on small decision logs written here (CSV, JSON lines, Parquet, with an item table):
the mdp table, `_features.json` and the manifest, worked out by hand (real Spark, real files)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preprocessing.import_job import run_import
from reagent_recsys.config import ConfigError, validate_config
from reagent_recsys.mdp_writer import read_mdp
from reagent_recsys.schema import FEATURES_FILE, MANIFEST_FILE

HEADER = ["session_id", "step", "timestamp", "age", "country", "position", "candidates", "item_id", "propensity",
          "reward", "revenue"]
ROWS = [
    ["s1", "0", "2026-01-01 10:00:00", "30", "FR", "0", "i1|i2|i3", "i2", "0.5", "1.0", "0.2"],
    ["s1", "1", "2026-01-01 10:00:30", "30", "FR", "2", "i2|i3", "i3", "0.25", "0.0", ""],
    ["s2", "0", "2026-01-02 23:59:59", "", "DE", "1", "i1|i4", "i4", "1", "2.5", "1.5"],
    ["s3", "0", "2026-01-03 00:00:00", "55", "US", "0", "i3", "i3", "1.0", "-1", "0"],
]
ITEMS = [["item_id", "price", "quality"], ["i1", "0.1", "1.0"], ["i2", "0.2", "2.0"], ["i3", "0.3", ""],
         ["i4", "0.4", "4.0"]]
MAPPING = {
    "session_column": "session_id", "step_column": "step", "timestamp_column": "timestamp",
    "timestamp_format": "yyyy-MM-dd HH:mm:ss", "action_column": "item_id", "propensity_column": "propensity",
    "reward_column": "reward", "metric_columns": ["revenue"], "position_column": "position",
    "candidates_column": "candidates", "numeric_features": ["age"], "categorical_features": ["country"],
}


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    path.write_text("\n".join(",".join(r) for r in rows) + "\n")
    return path


def typed_rows(rows: list[list[str]]) -> list[dict]:
    """The CSV rows as JSON / Parquet would hold them: numbers as numbers, candidates as lists."""
    out = []
    for r in rows:
        d = dict(zip(HEADER, r, strict=True))
        out.append({
            **d, "step": int(d["step"]), "age": float(d["age"]) if d["age"] else None,
            "position": int(d["position"]), "candidates": d["candidates"].split("|"),
            "propensity": float(d["propensity"]), "reward": float(d["reward"]),
            "revenue": float(d["revenue"]) if d["revenue"] else None,
        })
    return out


def config(root: Path, path: Path, fmt: str = "csv", items: Path | None = None, **overrides):
    section = {"format": fmt, "path": str(path), **MAPPING, **overrides}
    if items is not None:
        section["items"] = {"path": str(items), "format": "csv", "features": ["price", "quality"]}
    return validate_config({"output_dir": str(root / "out"), "import": section})


def imported(root: Path) -> tuple[list[dict], dict, dict]:
    mdp = root / "out" / "mdp"
    rows = sorted(read_mdp(mdp).to_pylist(), key=lambda r: (r["mdp_id"], r["sequence_number"]))
    for r in rows:
        r["state_features"] = dict(r["state_features"])
        r["metrics"] = dict(r["metrics"])
    features = json.loads((mdp / FEATURES_FILE).read_text())
    features.pop("source")  # the input path and format
    return rows, features, json.loads((mdp / MANIFEST_FILE).read_text())


def test_csv_with_item_table_becomes_the_mdp_table(spark, tmp_path):
    items = write_csv(tmp_path / "items.csv", ITEMS)
    summary = run_import(spark, config(tmp_path, write_csv(tmp_path / "log.csv", [HEADER, *ROWS]), items=items))
    rows, features, manifest = imported(tmp_path)
    assert summary["rows"] == manifest["rows"] == 4 and manifest["episodes"] == 3
    assert manifest["ds"] == ["2026-01-01", "2026-01-02", "2026-01-03"]

    ids = {f["name"]: f["id"] for f in features["features"]}
    # ids in a fixed order: numeric context, position, one-hot values, then (slot, item feature)
    assert [f["name"] for f in features["features"]][:5] == [
        "context.age", "context.position", "context.country=DE", "context.country=FR", "context.country=US"]
    assert features["action"]["values"] == ["i1", "i2", "i3", "i4"]
    assert features["categorical"]["country"] == {"encoding": "one_hot", "values": ["DE", "FR", "US"]}
    price_i2 = next(f for f in features["features"] if f["name"] == "item[i2].price")
    assert (price_i2["kind"], price_i2["slot"]) == ("document", 1)
    assert "item[i3].quality" not in ids  # missing in the item table: no feature

    first = rows[0]
    assert (first["ds"], first["mdp_id"], first["sequence_number"], first["action"]) == ("2026-01-01", "s1", 0, "i2")
    assert (first["action_probability"], first["reward"], first["metrics"]) == (0.5, 1.0, {"revenue": 0.2})
    assert first["possible_actions"] == ["i1", "i2", "i3"]
    assert first["state_features"] == pytest.approx({
        ids["context.age"]: 30.0, ids["context.position"]: 0.0, ids["context.country=FR"]: 1.0,
        ids["item[i1].price"]: 0.1, ids["item[i1].quality"]: 1.0, ids["item[i2].price"]: 0.2,
        ids["item[i2].quality"]: 2.0, ids["item[i3].price"]: 0.3,
    })
    assert rows[1]["metrics"] == {}  # blank metric: absent
    s2 = rows[2]  # blank age: the feature is absent; the late-evening timestamp stays on its UTC day
    assert ids["context.age"] not in s2["state_features"] and s2["ds"] == "2026-01-02"
    assert s2["state_features"][ids["item[i4].quality"]] == 4.0
    assert manifest["config_hash"] == config(tmp_path, tmp_path / "log.csv", items=items).section_hash("import_")


def test_jsonl_and_parquet_give_the_same_table_as_csv(spark, tmp_path):
    items = write_csv(tmp_path / "items.csv", ITEMS)
    run_import(spark, config(tmp_path / "csv", write_csv(tmp_path / "log.csv", [HEADER, *ROWS]), items=items))
    expected = imported(tmp_path / "csv")[:2]

    jsonl = tmp_path / "log.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in typed_rows(ROWS)))
    run_import(spark, config(tmp_path / "jsonl", jsonl, "jsonl", items=items))
    assert imported(tmp_path / "jsonl")[:2] == expected

    parquet = tmp_path / "log.parquet"
    pq.write_table(pa.Table.from_pylist(typed_rows(ROWS)), parquet)
    run_import(spark, config(tmp_path / "parquet", parquet, "parquet", items=items))
    assert imported(tmp_path / "parquet")[:2] == expected


def test_timestamp_only_hash_encoding_and_every_item_seen(spark, tmp_path):
    header = ["sid", "ts", "device", "action", "p", "r"]
    log = write_csv(tmp_path / "log.csv", [header, ["u1", "1767261600", "ios", "b", "0.5", "1"],
                                           ["u1", "1767261000", "web", "a", "0.5", "2"],
                                           ["u2", "1767348000", "ios", "c", "0.5", "3"]])
    cfg = validate_config({"output_dir": str(tmp_path / "out"), "import": {
        "format": "csv", "path": str(log), "session_column": "sid", "timestamp_column": "ts",
        "action_column": "action", "propensity_column": "p", "reward_column": "r",
        "categorical_features": ["device"], "categorical_encoding": "hash", "hash_buckets": 8}})
    run_import(spark, cfg)
    rows, features, _ = imported(tmp_path)
    assert [(r["mdp_id"], r["sequence_number"], r["action"], r["ds"]) for r in rows] == [
        ("u1", 0, "a", "2026-01-01"), ("u1", 1, "b", "2026-01-01"), ("u2", 0, "c", "2026-01-02")]
    assert all(r["possible_actions"] == ["a", "b", "c"] for r in rows)  # no candidates column: every item seen
    assert rows[0]["state_features"] != rows[1]["state_features"]  # web vs ios
    assert all(0 <= k < 8 and v == 1.0 for r in rows for k, v in r["state_features"].items())
    assert features["categorical"]["device"]["encoding"] == "hash"
    assert {f["name"].split("#")[0] for f in features["features"]} == {"context.device"}


def test_import_config_section_is_spelled_import(tmp_path):
    with pytest.raises(ConfigError, match=r"import\.candidate_column: unknown key \(did you mean candidates_column"):
        validate_config({"output_dir": "o", "import": {"format": "csv", "path": "x", "step_column": "s",
                                                       "candidate_column": "c"}})
    with pytest.raises(ConfigError, match=r"import: set step_column or timestamp_column"):
        validate_config({"output_dir": "o", "import": {"format": "csv", "path": "x"}})
    with pytest.raises(ConfigError, match=r"import: a run either simulates"):
        validate_config({"output_dir": "o", "env": {}, "import": {"format": "rllib", "path": "x"}})
    cfg = validate_config({"output_dir": "o", "import": {"format": "rllib", "path": "x"}})
    dumped = cfg.model_dump(mode="json")
    assert "import" in dumped and "import_" not in dumped
    assert validate_config(dumped).import_ == cfg.import_  # a dumped config loads again
    changed = validate_config({**dumped, "import": {**dumped["import"], "path": "y"}})
    assert changed.section_hash("import_") != cfg.section_hash("import_")
    assert changed.section_hash("timeline") == cfg.section_hash("timeline")


@pytest.mark.slow
def test_import_job_runs_under_spark_submit_like_in_process(spark, tmp_path):
    import subprocess

    from tests.preprocessing.test_cluster import VENV_BIN, _spark_env

    items = write_csv(tmp_path / "items.csv", ITEMS)
    log = write_csv(tmp_path / "log.csv", [HEADER, *ROWS])
    run_import(spark, config(tmp_path / "local", log, items=items))
    submitted = config(tmp_path / "submitted", log, items=items)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(json.dumps(submitted.model_dump(mode="json")))  # JSON is YAML
    job = subprocess.run(
        [str(VENV_BIN / "spark-submit"), "--master", "local[1]", str(Path(__file__).resolve().parents[2] /
                                                                      "preprocessing" / "import_job.py"),
         str(config_path)], capture_output=True, text=True, timeout=300, env=_spark_env(), cwd=tmp_path,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert imported(tmp_path / "submitted")[:2] == imported(tmp_path / "local")[:2]
