"""History features on a logs run (no simulator): decision logs -> import_logs -> timeline (timeline.history) ->
normalization -> training table -> train -> export. The timeline's history features equal the definition computed
row by row from the imported mdp table, and the exported policy's metadata lists them and carries their block."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from reagent_recsys.config import validate_config
from reagent_recsys.data.decision_log import DecisionLogSpec, write_decision_log
from reagent_recsys.history import HistorySpec, numpy_history
from reagent_recsys.mdp_writer import read_mdp
from reagent_recsys.schema import FEATURES_FILE

ROOT = Path(__file__).resolve().parents[2]
HISTORY = {"sums": ["candidate.price", "reward", "metric.revenue", "state.context.age"], "decays": [0.6, 1.0],
           "counts": ["step"], "since": ["metric.revenue"]}
SPEC = HistorySpec(sums=tuple(HISTORY["sums"]), decays=(0.6, 1.0), counts=("step",), since=("metric.revenue",))


@pytest.fixture(scope="module")
def history_run(tmp_path_factory, spark):
    from workflow.export import export
    from workflow.identify_normalization import identify_normalization
    from workflow.import_logs import import_logs
    from workflow.timeline_operator import timeline_operator
    from workflow.train import train
    from workflow.training_table import training_table

    root = tmp_path_factory.mktemp("history_run")
    write_decision_log(root / "data", DecisionLogSpec(sessions=300, max_steps=5))
    raw = yaml.safe_load((ROOT / "sample_configs" / "decision_log.yaml").read_text())
    raw.update(output_dir=str(root / "out"), spark={"master": "local[2]", "shuffle_partitions": 4})
    raw["import"].update(path=str(root / "data" / "decisions.csv"))
    raw["import"]["items"]["path"] = str(root / "data" / "items.csv")
    raw["timeline"]["history"] = HISTORY
    raw["training"].update(epochs=1, batch_size=64, hidden_sizes=[16])
    config = validate_config(raw)
    for stage in (import_logs, timeline_operator, identify_normalization, training_table, train, export):
        stage(config)
    return root / "out"


def step_values(rows: list[dict], description: dict) -> np.ndarray:
    """(N, sources) x of each mdp row, row by row from the description's names."""
    by_name = {f["name"]: f["id"] for f in description["features"]}
    x = np.zeros((len(rows), len(SPEC.sources)))
    for i, r in enumerate(rows):
        state, metrics = dict(r["state_features"]), dict(r["metrics"])
        values = {"candidate.price": state.get(by_name.get(f"item[{r['action']}].price"), 0.0),
                  "reward": r["reward"], "metric.revenue": metrics.get("revenue", 0.0),
                  "state.context.age": state.get(by_name["context.age"], 0.0), "step": 1.0}
        x[i] = [values[s] for s in SPEC.sources]
    return x


@pytest.mark.slow
def test_a_logs_run_computes_history_features_as_defined(history_run, spark):
    rows = read_mdp(history_run / "mdp").to_pylist()
    description = json.loads((history_run / "mdp" / FEATURES_FILE).read_text())
    keys = np.unique([r["mdp_id"] for r in rows], return_inverse=True)[1]
    expected = numpy_history(keys, np.array([r["sequence_number"] for r in rows]), step_values(rows, description),
                             SPEC)
    written = json.loads((history_run / "timeline" / FEATURES_FILE).read_text())
    ids = written["history"]["ids"]
    assert written["history"]["names"] == SPEC.names and min(ids) > max(f["id"] for f in description["features"])
    timeline = {(r.mdp_id, r.sequence_number): r.state_features for split in ("train", "eval")
                for r in spark.read.parquet(str(history_run / "timeline" / split)).collect()}
    assert len(timeline) == len(rows)
    assert expected[:, SPEC.names.index("history.sum[1].reward")].any()
    for i, r in enumerate(rows):
        got = timeline[(r["mdp_id"], r["sequence_number"])]
        np.testing.assert_array_equal(np.array([got[k] for k in ids], np.float32), expected[i])


@pytest.mark.slow
def test_the_export_metadata_lists_the_history_features(history_run):
    metadata = json.loads((history_run / "export" / "metadata.json").read_text())
    written = json.loads((history_run / "timeline" / FEATURES_FILE).read_text())
    names = dict(zip(metadata["feature_ids"], metadata["feature_names"], strict=True))
    assert [names[i] for i in written["history"]["ids"]] == SPEC.names
    assert metadata["history"] == written["history"]
    normalization = json.loads((history_run / "normalization.json").read_text())
    assert set(written["history"]["ids"]) <= set(normalization["feature_ids"])
