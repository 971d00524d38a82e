"""The same app as a Ray Serve deployment (needs the serve-ray extra: `pip install "ray[serve]"`)."""

from __future__ import annotations

import json
import socket

import pytest
import yaml

from reagent_recsys.mdp_writer import read_mdp
from tests.serving.helpers import Client, decision

ray = pytest.importorskip("ray", reason="the serve-ray extra (ray[serve]) is not installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ray_serve_deployment_serves_and_logs(exported_run, tmp_path):
    from ray import serve

    from reagent_recsys.serving.ray_app import policy_application

    config = tmp_path / "run.yaml"
    log_dir = tmp_path / "log"
    config.write_text(yaml.safe_dump({"output_dir": str(exported_run), "serve": {"log_dir": str(log_dir)}}))
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(policy_application(str(config)), route_prefix="/")
        client = Client(port)
        status, answer = client.post("/v1/act", decision("ray", 0))
        assert status == 200 and answer["propensity"] == 1.0
        assert client.post("/v1/feedback", {"decision_id": answer["decision_id"], "reward": 2.0})[0] == 200
        status, error = client.post("/v1/act", {**decision("ray", 1), "context": {"age": 1}})
        assert (status, error["field"]) == (422, "context.age")
        assert json.loads(json.dumps(client.request("GET", "/healthz")[1]))["pending"] == 0
        client.close()
        serve.shutdown()  # runs the app's shutdown: the log is flushed
    finally:
        ray.shutdown()
    rows = read_mdp(log_dir).to_pylist()
    assert [(r["mdp_id"], r["action"], r["reward"]) for r in rows] == [("ray", answer["action"], 2.0)]
