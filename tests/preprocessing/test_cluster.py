"""The timeline job submitted to a real Spark standalone cluster (master + one worker on 127.0.0.1) gives the same
table as local mode."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from preprocessing.timeline_job import run_timeline
from tests.preprocessing.test_timeline import make_config, read_split, step, write_mdp

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_env() -> dict[str, str]:
    import pyspark

    env = dict(os.environ)
    env.update(
        SPARK_HOME=str(Path(pyspark.__file__).parent),
        SPARK_LOCAL_IP="127.0.0.1",
        PYSPARK_PYTHON=sys.executable,
        PYSPARK_DRIVER_PYTHON=sys.executable,
    )
    env.pop("PYSPARK_GATEWAY_PORT", None)
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    return env


def _wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}) before {text!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.5)
    raise TimeoutError(f"no {text!r} in {log} after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture()
def standalone_cluster(tmp_path):
    """A master and a 1-core/1g worker from the installed pyspark; both stopped by PID at teardown."""
    env, spark_class = _spark_env(), str(VENV_BIN / "spark-class")
    port, ui_port, worker_ui = _free_port(), _free_port(), _free_port()
    url = f"spark://127.0.0.1:{port}"
    procs: list[subprocess.Popen] = []
    logs = {name: tmp_path / f"{name}.log" for name in ("master", "worker")}
    try:
        with logs["master"].open("w") as out:
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                 "--port", str(port), "--webui-port", str(ui_port)],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        _wait_for(logs["master"], "I have been elected leader", procs[0])
        with logs["worker"].open("w") as out:
            procs.append(subprocess.Popen(
                [spark_class, "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
                 "--memory", "1g", "--webui-port", str(worker_ui), "--work-dir", str(tmp_path / "work"), url],
                stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True))
        _wait_for(logs["worker"], "Successfully registered with master", procs[1])
        yield url, tmp_path / "work"
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


@pytest.mark.slow
def test_job_on_a_standalone_cluster_equals_local_mode(spark, tmp_path, standalone_cluster):
    url, work_dir = standalone_cluster
    rows = [step(f"u{i}", s, reward=float(i + s)) for i in range(40) for s in range(0, 2 * (i % 5) + 1, 2)]
    write_mdp(tmp_path, rows)
    timeline = {"multi_steps": 2, "gamma": 0.9, "eval_fraction": 0.3, "input_path": str(tmp_path / "mdp")}
    local_root, cluster_root = tmp_path / "local", tmp_path / "cluster"
    run_timeline(spark, make_config(local_root, **timeline))

    config_path = tmp_path / "cluster.yaml"
    config_path.write_text(json.dumps({"output_dir": str(cluster_root), "timeline": timeline,  # JSON is YAML
                                       "training": {"gamma": timeline["gamma"]}}))
    job = subprocess.run(
        [str(VENV_BIN / "spark-submit"), "--master", url, "--conf", "spark.driver.host=127.0.0.1",
         "--conf", "spark.executor.memory=512m", str(ROOT / "preprocessing" / "timeline_job.py"), str(config_path)],
        capture_output=True, text=True, timeout=300, env=_spark_env(), cwd=tmp_path,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    summary, _ = json.JSONDecoder().raw_decode(job.stdout, job.stdout.index("{"))  # spark-submit merges stderr in
    assert summary["rows_in"] == len(rows)
    # The work ran on the cluster's executor, not in a local-mode driver that ignored the submitted master.
    assert any(p.name.startswith("app-") for p in work_dir.iterdir())
    for split in ("train", "eval"):
        assert read_split(spark, cluster_root, split) == read_split(spark, local_root, split)
    manifests = [json.loads((root / "timeline" / "_manifest.json").read_text()) for root in (local_root, cluster_root)]
    assert manifests[0]["splits"] == manifests[1]["splits"] and manifests[0]["rows_out"]["eval"] > 0
