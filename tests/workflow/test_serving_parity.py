"""Serving parity, end to end: a tiny pipeline trained with timeline.history (simulator logs -> timeline ->
normalization -> training table -> 1 epoch -> export), served by the real server process on a free loopback port
to simulated users (decisions then feedback, episode after episode, over HTTP); the timeline stage then runs on
the server's decision log, and the history features of every timeline row equal, exactly, what the server
filled into the decision it served for that step (and the definition on the same steps)."""

from __future__ import annotations

import json
import signal

import numpy as np
import pytest

from reagent_recsys.config import validate_config
from reagent_recsys.history import numpy_history, spec_from_dict
from reagent_recsys.mdp_writer import read_mdp
from reagent_recsys.schema import FEATURES_FILE
from reagent_recsys.serving.loop import run_episodes
from tests.serving.helpers import ServerProcess

HISTORY = {"sums": ["candidate.*", "reward", "metric.engagement"], "decays": [0.5, 0.9, 1.0],
           "counts": ["step", "metric.engagement"], "since": ["action.0"]}
TINY = {
    "seed": 3,
    "env": {"type": "lts", "preset": "sweet_bitter", "observe_satisfaction": False, "observe_response": True},
    "logging": {"num_episodes": 60, "batch_size": 60},
    "timeline": {"eval_fraction": 0.3, "history": HISTORY},
    "training": {"epochs": 1, "batch_size": 128, "hidden_sizes": [16], "torch_threads": 1, "shuffle_buffer": 200,
                 "cpe_every_epoch": False},
    "training_table": {"num_files": 1},
    "spark": {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "1g"},
}


def _timeline_rows(spark, path) -> dict[tuple[str, int], dict[int, float]]:
    rows = {}
    for split in ("train", "eval"):
        for r in spark.read.parquet(f"{path}/{split}").select("mdp_id", "sequence_number", "state_features").collect():
            rows[(r.mdp_id, r.sequence_number)] = dict(r.state_features)
    return rows


@pytest.mark.slow
def test_served_history_features_equal_the_timeline_rows_of_the_decision_log(spark, tmp_path):
    from reagent_recsys.export import export_policy as export
    from workflow.identify_normalization import identify_normalization
    from workflow.offline_gym import offline_gym
    from workflow.timeline_operator import timeline_operator
    from workflow.train import train
    from workflow.training_table import training_table

    config = validate_config({**TINY, "output_dir": str(tmp_path / "run")})
    for stage in (offline_gym, timeline_operator, identify_normalization, training_table, train, export):
        stage(config)
    metadata = json.loads((tmp_path / "run" / "export" / "metadata.json").read_text())
    spec, ids = spec_from_dict(metadata["history"])
    assert set(spec.names) <= set(metadata["feature_names"]) and set(ids) <= set(metadata["feature_ids"])

    server = ServerProcess(tmp_path / "srv", tmp_path / "run", exploration="softmax", temperature=0.5)
    with server:
        client = server.client()
        returns = run_episodes(client, config.env, metadata, episodes=8, batch_size=4, seed=11, prefix="p")
        _, metrics = client.request("GET", "/metrics")
        client.close()
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM), server.stderr()[-2000:]
    assert len(returns) == 8
    assert "reagent_history_served_before_feedback_total 0" in metrics

    logged = read_mdp(server.log_dir).to_pylist()
    assert len(logged) == 80  # 8 sessions x 10 steps
    served = {(r["mdp_id"], r["sequence_number"]): dict(r["state_features"]) for r in logged}
    # the timeline stage (the retraining path) on the decision log, with the training run's history config
    retrain = validate_config({**TINY, "output_dir": str(tmp_path / "retrain"),
                               "timeline": {**TINY["timeline"], "input_path": str(server.log_dir)}})
    timeline_operator(retrain)
    description = json.loads((tmp_path / "retrain" / "timeline" / FEATURES_FILE).read_text())
    assert spec_from_dict(description["history"]) == (spec, ids)  # same features under the same ids
    rows = _timeline_rows(spark, tmp_path / "retrain" / "timeline")
    assert set(rows) == set(served)
    got = np.array([[rows[k][i] for i in ids] for k in sorted(served)], dtype=np.float32)
    seen = np.array([[served[k][i] for i in ids] for k in sorted(served)], dtype=np.float32)
    np.testing.assert_array_equal(got, seen)
    assert (seen != 0).mean() > 0.5  # the features carry information (not all zero)

    # and both equal the definition on the served steps (x from each logged row, computed here row by row)
    log_features = json.loads((server.log_dir / FEATURES_FILE).read_text())["features"]
    candidate = {f["slot"]: f["id"] for f in log_features if f.get("slot") is not None}
    keys = sorted(served)
    by_key = {(r["mdp_id"], r["sequence_number"]): r for r in logged}
    x = np.zeros((len(keys), len(spec.sources)))
    for n, key in enumerate(keys):
        r = by_key[key]
        values = {"reward": r["reward"], "step": 1.0, "action.0": float(r["action"] == "0"),
                  "metric.engagement": dict(r["metrics"]).get("engagement", 0.0),
                  "candidate.clickbait": float(served[key][candidate[int(r["action"])]])}
        x[n] = [values[s] for s in spec.sources]
    expected = numpy_history(np.array([k[0] for k in keys]), np.array([k[1] for k in keys]), x, spec)
    np.testing.assert_array_equal(seen, expected)
