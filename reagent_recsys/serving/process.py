"""`workflow.serve` as a child process on a free loopback port, and a small stdlib HTTP client for it.

Used by workflow.iterate (the closed loop), benchmarks/bench_serve.py and the tests: the real server process,
started with port 0, found through its port file, waited for on /healthz with a deadline, stopped by PID.
"""

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

ROOT = Path(__file__).resolve().parents[2]


class Client:
    """A keep-alive HTTP/1.1 JSON client on loopback (stdlib), bounded in time."""

    def __init__(self, port: int, timeout: float = 60.0, host: str = "127.0.0.1") -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout)

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
        return self.request("POST", path, json.dumps(payload, separators=(",", ":")))

    def close(self) -> None:
        self.conn.close()


class ServerProcess:
    """`cli.py run workflow.serve` in a child process; `serve` holds the serve-section overrides."""

    def __init__(self, work_dir: Path, output_dir: Path, *, seed: int = 7, **serve: Any) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        self.port_file = work_dir / "port.json"
        self.port_file.unlink(missing_ok=True)
        self.log_dir = Path(serve.pop("log_dir", work_dir / "decision_log"))
        section = {"host": "127.0.0.1", "port": 0, "port_file": str(self.port_file), "log_dir": str(self.log_dir),
                   **serve}
        self.config_path = work_dir / "serve.yaml"
        self.config_path.write_text(yaml.safe_dump({"output_dir": str(output_dir), "seed": seed, "serve": section}))
        self.stderr_path = work_dir / "server.stderr"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self, timeout: float = 120.0) -> ServerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "workflow" / "cli.py"), "run", "workflow.serve",
                                          str(self.config_path)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err,
                                         env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.stderr()[-3000:]}")
            if self.port_file.exists():
                self.port = json.loads(self.port_file.read_text())["port"]
                client = Client(self.port, timeout=5)
                try:
                    if client.request("GET", "/healthz")[0] == 200:
                        return self
                except OSError:
                    pass
                finally:
                    client.close()
            time.sleep(0.1)
        self.kill()
        raise TimeoutError(f"server not healthy within {timeout}s: {self.stderr()[-3000:]}")

    def client(self, timeout: float = 60.0) -> Client:
        return Client(self.port, timeout)

    def health(self) -> dict[str, Any]:
        client = self.client(10)
        try:
            return client.request("GET", "/healthz")[1]
        finally:
            client.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120.0) -> int:
        """Send `sig` to the server's PID and wait for it; returns the exit code (-signal when it died by it)."""
        if self.proc is None:
            return 0
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
