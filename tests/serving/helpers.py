"""A tiny exported policy shaped like the simulator's (context + per-candidate features) and a real server process."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from reagent_recsys.config import validate_config
from reagent_recsys.data.synthetic import write_synthetic_run
from reagent_recsys.normalization import NormalizationArtifact

ROOT = Path(__file__).resolve().parents[2]
# 2 context features + 4 candidate slots with one feature each; 4 actions "0".."3" (the slots)
NAMES = {1: "user.satisfaction", 2: "time.progress", 3: "doc[0].clickbait", 4: "doc[1].clickbait",
         5: "doc[2].clickbait", 6: "doc[3].clickbait"}
CONTEXT = {"user.satisfaction": 0.5, "time.progress": -0.5}


def build_export(out: Path, seed: int = 0, epochs: int = 1) -> Path:
    """Train and export a tiny DQN on synthetic rows (seconds); returns the run's output_dir."""
    from workflow.export import export
    from workflow.train import train

    write_synthetic_run(out, 1500, num_features=6, num_actions=4, seed=seed, row_group_size=250)
    artifact = NormalizationArtifact.load(out / "normalization.json")
    artifact.names = dict(NAMES)
    artifact.save(out / "normalization.json")
    config = validate_config({"output_dir": str(out), "seed": seed, "training": {
        "epochs": epochs, "batch_size": 128, "hidden_sizes": [16], "shuffle_buffer": 500, "torch_threads": 1,
        "cpe_every_epoch": False}})
    train(config)
    export(config)
    return out


def decision(session: str, step: int, clickbait: list[float] | None = None, **context: float) -> dict[str, Any]:
    clickbait = [0.9, 0.1, 0.8, 0.2] if clickbait is None else clickbait
    return {"session_id": session, "step": step, "context": {**CONTEXT, **context},
            "candidates": [{"id": f"doc-{j}", "features": {"clickbait": c}} for j, c in enumerate(clickbait)]}


class Client:
    """A keep-alive HTTP/1.1 client on loopback (stdlib), bounded in time."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | str | None = None) -> tuple[int, Any]:
        if isinstance(body, str):
            body = body.encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=body, headers=headers)
        response = self.conn.getresponse()
        data = response.read()
        kind = response.getheader("Content-Type", "")
        return response.status, (json.loads(data) if "json" in kind else data.decode())

    def post(self, path: str, payload: Any) -> tuple[int, Any]:
        return self.request("POST", path, json.dumps(payload))

    def close(self) -> None:
        self.conn.close()


class ServerProcess:
    """`cli.py run workflow.serve` in a subprocess on a free loopback port; stopped by PID."""

    def __init__(self, tmp: Path, output_dir: Path, **serve: Any) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port_file = tmp / "port.json"
        self.port_file.unlink(missing_ok=True)
        self.log_dir = Path(serve.pop("log_dir", tmp / "decision_log"))
        section = {"host": "127.0.0.1", "port": 0, "port_file": str(self.port_file), "log_dir": str(self.log_dir),
                   "reload_seconds": 0.2, **serve}
        self.config_path = tmp / "serve.yaml"
        self.config_path.write_text(yaml.safe_dump({"output_dir": str(output_dir), "seed": 7, "serve": section}))
        self.stderr_path = tmp / "server.stderr"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 90.0) -> ServerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "workflow" / "cli.py"), "run", "workflow.serve",
                                          str(self.config_path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
                                         env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.stderr()[-3000:]}")
            if self.port_file.exists():
                self.port = json.loads(self.port_file.read_text())["port"]
                client = Client(self.port, timeout=5)
                try:
                    status, _ = client.request("GET", "/healthz")
                    if status == 200:
                        return self
                except OSError:
                    pass
                finally:
                    client.close()
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"server not healthy within {timeout}s: {self.stderr()[-3000:]}")

    def client(self) -> Client:
        return Client(self.port)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.kill()
