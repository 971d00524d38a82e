"""The real server process on a free loopback port: concurrency, bad requests, SIGTERM/SIGKILL, hot reload,
the feedback-timeout rule, and a decision log that goes through the timeline unchanged with exact propensities."""

from __future__ import annotations

import json
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from reagent_recsys.artifacts import atomic_directory
from reagent_recsys.config import validate_config
from reagent_recsys.mdp_writer import check_written, read_mdp
from reagent_recsys.schema import FEATURES_FILE, MANIFEST_FILE
from tests.serving.helpers import NAMES, ServerProcess, decision

EPSILON = 0.4


def _episode(server: ServerProcess, session: str, steps: int, seed: int) -> list[dict]:
    """One client session: decide, then post the reward, step after step; returns what was served."""
    rng = np.random.default_rng(seed)
    client = server.client()
    served = []
    try:
        for step in range(steps):
            request = decision(session, step, rng.random(4).round(3).tolist(),
                               **{"user.satisfaction": round(float(rng.random()), 3)})
            status, answer = client.post("/v1/act", request)
            assert status == 200, answer
            status, joined = client.post("/v1/feedback", {"decision_id": answer["decision_id"],
                                                          "reward": step + 0.5, "metrics": {"click": 1.0}})
            assert status == 200, joined
            served.append({**answer, "request": request})
    finally:
        client.close()
    return served


def _log_rows(log_dir: Path) -> dict[tuple[str, int], dict]:
    table = read_mdp(log_dir).to_pylist()
    return {(r["mdp_id"], r["sequence_number"]): r for r in table}


@pytest.fixture(scope="module")
def concurrent_run(exported_run, tmp_path_factory):
    """8 concurrent clients x 25 steps against an epsilon-greedy server, then SIGTERM."""
    tmp = tmp_path_factory.mktemp("concurrent")
    server = ServerProcess(tmp, exported_run, exploration="epsilon_greedy", epsilon=EPSILON,
                           flush={"max_rows": 64, "max_seconds": 0.5})
    with server:
        with ThreadPoolExecutor(8) as pool:
            episodes = list(pool.map(lambda i: _episode(server, f"user-{i}", 25, i), range(8)))
        status, metrics = server.client().request("GET", "/metrics")
        code = server.stop(signal.SIGTERM)
    return server, [d for e in episodes for d in e], metrics, code


def test_concurrent_clients_and_sigterm_lose_nothing(concurrent_run):
    server, served, metrics, code = concurrent_run
    assert code in (0, -signal.SIGTERM), server.stderr()[-2000:]
    assert len({d["decision_id"] for d in served}) == len(served) == 200
    check_written(server.log_dir)  # schema.MDP exactly
    rows = _log_rows(server.log_dir)
    assert len(rows) == 200
    for d in served:
        row = rows[(d["request"]["session_id"], d["request"]["step"])]
        assert row["action"] == d["action"] and row["action_probability"] == d["propensity"]
        assert row["reward"] == d["request"]["step"] + 0.5
        assert dict(row["metrics"]) == {"click": 1.0, "feedback_missing": 0.0}
        assert row["possible_actions"] == ["0", "1", "2", "3"]
        state = dict(row["state_features"])
        assert state[1] == pytest.approx(d["request"]["context"]["user.satisfaction"])
        assert [state[i] for i in (3, 4, 5, 6)] == pytest.approx(
            [c["features"]["clickbait"] for c in d["request"]["candidates"]])
    manifest = json.loads((server.log_dir / MANIFEST_FILE).read_text())
    assert (manifest["rows"], manifest["feedback_joined"], manifest["pending"]) == (200, 200, 0)
    assert manifest["segments"] >= 2  # rolled by size (64 rows)
    features = json.loads((server.log_dir / FEATURES_FILE).read_text())
    assert {f["id"]: f["name"] for f in features["features"]} == NAMES
    assert 'reagent_requests_total{endpoint="/v1/act",code="200"} 200' in metrics
    assert 'reagent_decisions_total 200' in metrics


def test_propensities_are_exactly_what_was_served(concurrent_run, exported_run):
    """epsilon-greedy: p = eps / 4 + (1 - eps) [a == the policy's greedy action], recomputed from policy.pt."""
    _, served, _, _ = concurrent_run
    policy = torch.jit.load(str(exported_run / "export" / "policy.pt"))
    names = list(NAMES.values())
    state = torch.tensor([[{**d["request"]["context"], **{f"doc[{j}].clickbait": c["features"]["clickbait"]
                                                           for j, c in enumerate(d["request"]["candidates"])}}[n]
                           for n in names] for d in served])
    greedy = policy(state)["action"].numpy()
    served_action = np.array([int(d["action"]) for d in served])
    expected = EPSILON / 4 + (1 - EPSILON) * (served_action == greedy)
    np.testing.assert_array_equal(np.array([d["propensity"] for d in served]), expected)
    explored = (served_action != greedy).mean()
    assert 0.1 < explored < 0.5  # eps * 3/4 = 0.3 of the decisions


def test_the_log_goes_through_the_timeline_unchanged(concurrent_run, spark, tmp_path):
    from preprocessing.timeline_job import run_timeline

    server, served, _, _ = concurrent_run
    config = validate_config({"output_dir": str(tmp_path), "timeline": {"input_path": str(server.log_dir)}})
    summary = run_timeline(spark, config)
    import pyarrow.dataset as pads
    out = pads.dataset(str(tmp_path / "timeline"), format="parquet", partitioning="hive").to_table()
    out = out.filter(pc.is_valid(out["not_terminal"]))
    assert out.num_rows == 200, summary
    by_key = {(r["mdp_id"], r["sequence_number"]): r for r in out.to_pylist()}
    for d in served:
        row = by_key[(d["request"]["session_id"], d["request"]["step"])]
        assert row["action_probability"] == d["propensity"] and row["action"] == d["action"]
    assert sum(not r["not_terminal"] for r in by_key.values()) == 8  # one episode per client


BAD = [
    ("/v1/act", "{not json", 400, "body"),
    ("/v1/act", json.dumps([1]), 422, "body"),
    ("/v1/act", json.dumps({**decision("b", 0), "context": {"user.satisfaction": 1, "time.progress": 0, "age": 3}}),
     422, "context.age"),
    ("/v1/act", json.dumps({**decision("b", 0), "context": {"user.satisfaction": 1}}), 422, "context.time.progress"),
    ("/v1/act", json.dumps({**decision("b", 0), "context": {"user.satisfaction": "1", "time.progress": 0}}), 422,
     "context.user.satisfaction"),
    ("/v1/act", json.dumps({**decision("b", 0), "candidates": []}), 422, "candidates"),
    ("/v1/act", json.dumps({**decision("b", 0), "step": "one"}), 422, "step"),
    ("/v1/act", json.dumps({"decisions": [decision("b", 0), {**decision("b", 1), "session_id": 3}]}), 422,
     "decisions[1].session_id"),
    ("/v1/act", '{"session_id": "b", "step": 0, "context": {"user.satisfaction": NaN, "time.progress": 0}}', 422,
     "context.user.satisfaction"),
    ("/v1/feedback", json.dumps({"decision_id": "nope", "reward": 1.0}), 404, "decision_id"),
    ("/v1/feedback", json.dumps({"decision_id": "nope"}), 422, "reward"),
    ("/v1/feedback", "", 400, "body"),
]


def test_bad_requests_are_4xx_naming_the_field_and_log_nothing(exported_run, tmp_path):
    server = ServerProcess(tmp_path, exported_run, exploration="softmax", temperature=0.5)
    with server:
        client = server.client()
        for path, body, status, field in BAD:
            got, answer = client.request("POST", path, body)
            assert (got, answer.get("field")) == (status, field), (path, body, answer)
            assert answer["error"]
        status, first = client.post("/v1/act", decision("good", 0))
        assert status == 200
        assert client.post("/v1/act", decision("good", 0))[0] == 409  # the same step twice
        assert client.post("/v1/feedback", {"decision_id": first["decision_id"], "reward": 1})[0] == 200
        status, again = client.post("/v1/feedback", {"decision_id": first["decision_id"], "reward": 1})
        assert (status, again["field"]) == (409, "decision_id")
        assert client.request("GET", "/v1/act")[0] == 405
        _, metrics = client.request("GET", "/metrics")
        assert 'code="5' not in metrics
        assert server.stop() in (0, -signal.SIGTERM)
    rows = _log_rows(server.log_dir)
    assert list(rows) == [("good", 0)]  # the bad requests logged nothing
    # softmax(Q / 0.5) over the 4 candidates, recomputed from policy.pt
    policy = torch.jit.load(str(exported_run / "export" / "policy.pt"))
    q = policy(torch.tensor([[0.5, -0.5, 0.9, 0.1, 0.8, 0.2]]))["q_values"].double()
    probs = torch.softmax(q / 0.5, dim=1)[0]
    assert rows[("good", 0)]["action_probability"] == pytest.approx(float(probs[int(first["action"])]), rel=1e-6)


def test_sigkill_loses_no_acknowledged_decision(exported_run, tmp_path):
    """Decisions and feedback are journaled before the response: after SIGKILL a restart recovers all of them
    (decisions still awaiting feedback wait again), so the documented loss bound is 0 acknowledged events."""
    log_dir = tmp_path / "log"
    server = ServerProcess(tmp_path / "a", exported_run, log_dir=log_dir, flush={"max_rows": 10_000,
                                                                                 "max_seconds": 3600})
    with server:
        client = server.client()
        answers = [client.post("/v1/act", decision(f"k{i}", s))[1] for i in range(10) for s in range(3)]
        for a in answers[:20]:
            assert client.post("/v1/feedback", {"decision_id": a["decision_id"], "reward": 2.0})[0] == 200
        assert server.stop(signal.SIGKILL) == -signal.SIGKILL
    assert not list(log_dir.glob("ds=*/*.parquet"))  # nothing was flushed to a segment before the kill
    restarted = ServerProcess(tmp_path / "b", exported_run, log_dir=log_dir)
    with restarted:
        client = restarted.client()
        assert client.request("GET", "/healthz")[1]["pending"] == 10
        for a in answers[20:]:  # feedback for decisions served by the killed process
            assert client.post("/v1/feedback", {"decision_id": a["decision_id"], "reward": 3.0})[0] == 200
        assert client.post("/v1/act", decision("k0", 0))[0] == 409  # it remembers what was decided
        assert restarted.stop() in (0, -signal.SIGTERM)
    rows = _log_rows(log_dir)
    assert len(rows) == 30
    assert sorted(r["reward"] for r in rows.values()) == [2.0] * 20 + [3.0] * 10
    assert {r["action_probability"] for r in rows.values()} == {1.0}  # greedy


def test_hot_reload_under_load_fails_no_request(exported_run, second_export, tmp_path):
    export_dir = tmp_path / "export"
    shutil.copytree(exported_run / "export", export_dir)
    server = ServerProcess(tmp_path / "srv", exported_run, export_dir=str(export_dir), reload_seconds=0.1)
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def hammer(worker: int) -> None:
        client = server.client()
        step = 0
        while not stop.is_set():
            status, answer = client.post("/v1/act", decision(f"h{worker}", step))
            results.append((status, answer.get("policy_version", "")))
            step += 1
        client.close()

    with server:
        first = server.client().request("GET", "/healthz")[1]["policy_version"]
        threads = [threading.Thread(target=hammer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        with atomic_directory(export_dir) as tmp:  # what workflow.export does: a new directory swapped in
            shutil.copytree(second_export / "export", tmp, dirs_exist_ok=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and server.client().request("GET", "/healthz")[1]["policy_version"] == first:
            time.sleep(0.1)
        time.sleep(1.0)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        _, metrics = server.client().request("GET", "/metrics")
    statuses = [s for s, _ in results]
    versions = [v for _, v in results]
    assert statuses and set(statuses) == {200}
    second = versions[-1]
    assert second != first and set(versions) == {first, second}
    assert "reagent_policy_reloads_total 1" in metrics and f'reagent_policy_info{{version="{second}"}} 1' in metrics


@pytest.mark.parametrize("rule", ["zero_reward", "drop"])
def test_missing_feedback_rule_is_applied_and_counted(exported_run, tmp_path, rule):
    server = ServerProcess(tmp_path, exported_run, feedback_timeout_seconds=0.5, on_missing_feedback=rule)
    with server:
        client = server.client()
        answers = [client.post("/v1/act", decision("t", s))[1] for s in range(4)]
        client.post("/v1/feedback", {"decision_id": answers[0]["decision_id"], "reward": 5.0})
        time.sleep(1.5)
        status, late = client.post("/v1/feedback", {"decision_id": answers[1]["decision_id"], "reward": 1.0})
        assert (status, late["field"]) == (409, "decision_id")  # too late: already closed by the rule
        assert server.stop() in (0, -signal.SIGTERM)
    rows = _log_rows(server.log_dir)
    manifest = json.loads((server.log_dir / MANIFEST_FILE).read_text())
    if rule == "zero_reward":
        assert [rows[("t", s)]["reward"] for s in range(4)] == [5.0, 0.0, 0.0, 0.0]
        assert dict(rows[("t", 3)]["metrics"]) == {"feedback_missing": 1.0}
        assert manifest["feedback_missing_zero_reward"] == 3
    else:
        assert list(rows) == [("t", 0)]
        assert manifest["feedback_missing_dropped"] == 3
