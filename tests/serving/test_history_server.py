"""History features through the real server process (a hand-made export with a history block): sessions replayed
over HTTP from concurrent clients, one step's feedback missing (zero_reward); the features each decision saw
(the log rows) equal the definition on the served steps and what Spark recomputes from the log, exactly."""

from __future__ import annotations

import json
import shutil
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from reagent_recsys.artifacts import atomic_directory
from reagent_recsys.history import spark_history, spec_from_dict
from reagent_recsys.mdp_writer import check_written, read_mdp
from reagent_recsys.schema import FEATURES_FILE
from tests.serving.helpers import ServerProcess, decision
from tests.serving.history_helpers import (
    HISTORY_IDS,
    SPEC,
    history_export,
    history_metadata,
    reference_features,
)

EPSILON = 0.3
TIMEOUT = 3.0


def replay(server: ServerProcess, session: str, steps: list[int], seed: int, missing: int | None = None) -> list[dict]:
    """One client session: decide, then post the reward (except at index `missing`: the server times it out and
    the next step waits for that); returns the steps as the client knows them."""
    rng = np.random.default_rng(seed)
    client = server.client()
    served = []
    try:
        for index, step in enumerate(steps):
            request = decision(session, step, rng.random(4).round(3).tolist(),
                               **{"user.satisfaction": round(float(rng.random()), 3)})
            status, answer = client.post("/v1/act", request)
            assert status == 200, answer
            reward, metrics = round(float(rng.normal()), 3), {"click": float(rng.random() < 0.4)}
            if index == missing:
                reward, metrics = 0.0, {}  # what zero_reward logs
                time.sleep(TIMEOUT + 1.5)
            else:
                status, joined = client.post("/v1/feedback", {"decision_id": answer["decision_id"],
                                                              "reward": reward, "metrics": metrics})
                assert status == 200, joined
            served.append({**answer, "request": request, "reward": reward, "metrics": metrics})
    finally:
        client.close()
    return served


@pytest.fixture(scope="module")
def history_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("history_server")
    out = history_export(tmp / "run")
    server = ServerProcess(tmp / "srv", out, exploration="epsilon_greedy", epsilon=EPSILON,
                           feedback_timeout_seconds=TIMEOUT, flush={"max_rows": 16, "max_seconds": 0.5})
    rng = np.random.default_rng(0)
    plans = [(f"h{k}", np.cumsum(rng.integers(1, 3, 10)).tolist(), k, 4 if k == 1 else None) for k in range(4)]
    with server:
        with ThreadPoolExecutor(4) as pool:
            sessions = dict(zip([p[0] for p in plans], pool.map(lambda p: replay(server, *p), plans), strict=True))
        client = server.client()
        refused = {
            "history": client.post("/v1/act", decision("h0", 100, **{SPEC.names[2]: 1.0})),
            "order": client.post("/v1/act", decision("h0", 1)),
            "twice": client.post("/v1/act", {"decisions": [decision("z", 0), decision("z", 1)]}),
        }
        status, metrics = client.request("GET", "/metrics")
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM), server.stderr()[-2000:]
    return server, sessions, refused, metrics, out


def test_served_history_equals_the_definition_on_the_served_steps(history_run):
    server, sessions, _, metrics, _ = history_run
    check_written(server.log_dir)
    rows = {(r["mdp_id"], r["sequence_number"]): r for r in read_mdp(server.log_dir).to_pylist()}
    assert len(rows) == 40
    for session, steps in sessions.items():
        logged = np.array([[dict(rows[(session, s["request"]["step"])]["state_features"])[i] for i in HISTORY_IDS]
                           for s in steps], dtype=np.float32)
        np.testing.assert_array_equal(logged, reference_features(steps))
        assert [rows[(session, s["request"]["step"])]["reward"] for s in steps] == [s["reward"] for s in steps]
    assert dict(rows[("h1", sessions["h1"][4]["request"]["step"])]["metrics"]) == {"feedback_missing": 1.0}
    assert "reagent_history_sessions 4" in metrics and "reagent_history_served_before_feedback_total 0" in metrics
    description = json.loads((server.log_dir / FEATURES_FILE).read_text())
    assert spec_from_dict(description["history"]) == (SPEC, HISTORY_IDS)
    assert {f["id"] for f in description["features"] if f["kind"] == "history"} == set(HISTORY_IDS)


def test_the_policy_acted_on_the_filled_features(history_run):
    """epsilon-greedy propensities recomputed from policy.pt on the logged state (history included)."""
    server, sessions, _, _, out = history_run
    rows = {(r["mdp_id"], r["sequence_number"]): r for r in read_mdp(server.log_dir).to_pylist()}
    ids = history_metadata()["feature_ids"]
    served = [s for steps in sessions.values() for s in steps]
    state = torch.tensor([[dict(rows[(s["request"]["session_id"], s["request"]["step"])]["state_features"])[i]
                           for i in ids] for s in served])
    greedy = torch.jit.load(str(out / "export" / "policy.pt"))(state)["action"].numpy()
    action = np.array([int(s["action"]) for s in served])
    np.testing.assert_array_equal([s["propensity"] for s in served], EPSILON / 4 + (1 - EPSILON) * (action == greedy))
    without = state.clone()
    without[:, len(ids) - len(HISTORY_IDS):] = 0
    assert (torch.jit.load(str(out / "export" / "policy.pt"))(without)["action"].numpy() != greedy).any()


def test_spark_recomputes_exactly_what_was_served(history_run, spark):
    """The table's definition on the decision log as the retraining timeline reads it: spark_history replaces
    the served history values by its own, which must be the same numbers."""
    server, _, _, _, _ = history_run
    description = json.loads((server.log_dir / FEATURES_FILE).read_text())
    spec, ids = spec_from_dict(description["history"])
    logged = {(r["mdp_id"], r["sequence_number"]): dict(r["state_features"])
              for r in read_mdp(server.log_dir).to_pylist()}
    df = spark.read.parquet(str(server.log_dir)).repartition(3)
    out = spark_history(df, spec, description, ids).select("mdp_id", "sequence_number", "state_features")
    recomputed = {(r.mdp_id, r.sequence_number): dict(r.state_features) for r in out.toPandas().itertuples()}
    assert recomputed == logged


def test_refusals_name_the_field(history_run):
    _, _, refused, _, _ = history_run
    status, answer = refused["history"]
    assert (status, answer["field"]) == (422, f"context.{SPEC.names[2]}")
    status, answer = refused["order"]
    assert (status, answer["field"]) == (409, "step")
    status, answer = refused["twice"]
    assert (status, answer["field"]) == (422, "decisions[1].session_id")


def test_history_with_the_drop_rule_is_a_config_error(history_run, tmp_path: Path):
    _, _, _, _, out = history_run
    server = ServerProcess(tmp_path, out, on_missing_feedback="drop")
    with pytest.raises(RuntimeError, match="serve.on_missing_feedback"):
        server.start(timeout=60)


def test_a_restart_refuses_old_sessions_and_a_reload_must_keep_the_history_block(history_run, exported_run,
                                                                                  tmp_path: Path):
    """The history lives in the process: after a restart on the same log, a session with logged decisions is
    refused (409 naming session_id) and a new one is served; an export without the same history block is not
    hot-loaded (the running version keeps serving, counted as a reload failure)."""
    old, sessions, _, _, out = history_run
    export_dir = tmp_path / "export"
    shutil.copytree(out / "export", export_dir)
    shutil.copytree(old.log_dir, tmp_path / "log")  # the same log, restarted on (a copy: other tests read it)
    server = ServerProcess(tmp_path / "srv", out, log_dir=tmp_path / "log", export_dir=str(export_dir),
                           reload_seconds=0.2)
    with server:
        client = server.client()
        last = sessions["h0"][-1]["request"]["step"]
        status, answer = client.post("/v1/act", decision("h0", last + 1))
        assert (status, answer["field"]) == (409, "session_id") and "before this server started" in answer["error"]
        version = server.health()["policy_version"]
        with atomic_directory(export_dir) as tmp:  # a policy without history features
            shutil.copytree(exported_run / "export", tmp, dirs_exist_ok=True)
        deadline = time.monotonic() + 30
        while "reagent_policy_reload_failures_total 1" not in client.request("GET", "/metrics")[1]:
            assert time.monotonic() < deadline, server.stderr()[-2000:]
            time.sleep(0.2)
        assert server.health()["policy_version"] == version
        assert "history features differ" in server.stderr()
        status, answer = client.post("/v1/act", decision("fresh", 0))
        assert status == 200 and answer["policy_version"] == version
        assert server.stop() in (0, -signal.SIGTERM)
