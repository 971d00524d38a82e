"""The README's TensorBoard command on a real training run: the server starts and serves the run's scalars."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from reagent_recsys.data.synthetic import write_synthetic_run
from tests.training.helpers import TINY, tiny_config
from workflow.train import train


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scalar_tags(server: subprocess.Popen, port: int, deadline: float) -> dict:
    """GET /data/plugin/scalars/tags until the server has loaded tags (TensorBoard loads event files lazily)."""
    url = f"http://127.0.0.1:{port}/data/plugin/scalars/tags"
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"tensorboard exited with {server.returncode}:\n{server.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                tags = json.loads(response.read())
            if any(tags.values()) and any(any(t.startswith("cpe/") for t in run) for run in tags.values()):
                return tags
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"no scalar tags from {url} in time")


def test_tensorboard_serves_a_real_run(tmp_path):
    write_synthetic_run(tmp_path, 1000, eval_rows=400, seed=0, **TINY)
    train(tiny_config(tmp_path, epochs=2))
    logdir = tmp_path / "training" / "tensorboard"
    port = free_port()
    tensorboard = Path(sys.executable).parent / "tensorboard"  # the README's .venv/bin/tensorboard
    server = subprocess.Popen([str(tensorboard), "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        tags = scalar_tags(server, port, time.monotonic() + 90)
        every_tag = {tag for run in tags.values() for tag in run}
        assert any("td_loss" in tag for tag in every_tag), every_tag
        assert any(tag.startswith("cpe/") for tag in every_tag), every_tag
        assert server.poll() is None
    finally:
        os.kill(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
