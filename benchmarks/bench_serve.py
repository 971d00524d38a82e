"""workflow.serve under load on loopback, side by side with the bare TorchScript forward pass (the limit).

    .venv/bin/python benchmarks/bench_serve.py [--seconds 10] [--connections 32] [--batch 32] [--export DIR]

A policy of the sweet_bitter shape (2 context features + 20 candidates with one feature each, 20 actions,
dueling 256-128 MLP, random weights: the cost does not depend on the weights) is exported to a temporary
directory unless --export names one. The server runs as its own process (`cli.py run workflow.serve`, uvicorn
with uvloop/httptools when installed, epsilon-greedy exploration, every decision journaled); the load
generator is this process: asyncio keep-alive HTTP/1.1 connections in a closed loop, each request with a new
(session, step). Rows:

* bare forward: policy(state, presence, mask) in a loop, 1 row and --batch rows per call (no HTTP, no JSON);
* act, 1 decision/request: /v1/act with one decision and its 20 candidates (the target: >= 2,000 decisions/s
  at p99 <= 20 ms);
* act + feedback: each decision followed by its /v1/feedback (the log gets complete rows; 2 requests/decision);
* act, --batch decisions/request;
* history: the same single-decision rows on a second server whose export has history features (decayed sums of
  the chosen candidate's clickbait and of the reward at 4 decays, and the step count: 9 features the server keeps
  per session, reagent_recsys/serving/session_history.py), side by side with the rows above.

Latencies are end to end at the client. "Where the time goes" reads the server's /metrics: its handler time
and forward-pass time per decision, and the mean number of decisions per forward pass (concurrent requests are
batched). The machine is shared: its load average is printed with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reagent_recsys.data.synthetic import synthetic_normalization  # noqa: E402
from reagent_recsys.export import METADATA_FILE, ExportedPolicy, metadata_dict, script_policy  # noqa: E402
from reagent_recsys.history import HistorySpec, spec_to_dict  # noqa: E402
from reagent_recsys.normalization import Preprocessor  # noqa: E402
from reagent_recsys.serving.process import ServerProcess  # noqa: E402
from reagent_recsys.training.networks import DQNModel  # noqa: E402

CANDIDATES = 20


HISTORY = HistorySpec(sums=("candidate.clickbait", "reward"), decays=(0.5, 0.8, 0.95, 1.0), counts=("step",))


def make_export(directory: Path, history: bool = False) -> Path:
    """A sweet_bitter-shaped policy with random weights -> directory/export/{policy.pt, metadata.json}; with
    `history`, HISTORY's features are inputs too (ids 1000...) and the metadata carries the history block."""
    torch.manual_seed(0)
    history_ids = list(range(1000, 1000 + len(HISTORY.features))) if history else []
    ids = [0, 3, *range(100, 100 + CANDIDATES), *history_ids]
    artifact = synthetic_normalization(ids)
    artifact.names = {0: "user.satisfaction", 3: "time.progress",
                      **{100 + i: f"doc[{i}].clickbait" for i in range(CANDIDATES)},
                      **dict(zip(history_ids, HISTORY.names, strict=False))}
    model = DQNModel(artifact.output_dim, CANDIDATES, [256, 128])
    scripted = script_policy(ExportedPolicy(Preprocessor(artifact), model))
    metadata = metadata_dict(ids, artifact.names, [str(i) for i in range(CANDIDATES)], artifact.to_json(), {}, {}, {},
                             history=spec_to_dict(HISTORY, history_ids) if history else None)
    out = directory / "export"
    out.mkdir(parents=True, exist_ok=True)
    torch.jit.save(scripted, str(out / "policy.pt"), _extra_files={METADATA_FILE: json.dumps(metadata)})
    (out / METADATA_FILE).write_text(json.dumps(metadata))
    return directory


def bare_forward(policy_path: Path, rows: int, seconds: float) -> dict[str, float]:
    policy = torch.jit.load(str(policy_path))
    torch.set_num_threads(1)
    f = 2 + CANDIDATES
    state, presence = torch.rand(rows, f), torch.ones(rows, f)
    mask = torch.ones(rows, CANDIDATES, dtype=torch.bool)
    for _ in range(50):
        policy(state, presence, mask)
    times = []
    deadline = time.perf_counter() + seconds
    with torch.inference_mode():
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            policy(state, presence, mask)
            times.append(time.perf_counter() - started)
    t = np.array(times)
    return {"decisions/s": rows * len(t) / t.sum(), "p50 ms": 1e3 * np.percentile(t, 50),
            "p99 ms": 1e3 * np.percentile(t, 99), "requests": len(t)}


def decision_tails(rng: np.random.Generator, n: int = 64) -> list[bytes]:
    """`n` pre-encoded decision bodies after their session and step (context and 20 candidates), so the load
    generator only formats the (session, step) of each request."""
    tails = []
    for _ in range(n):
        rest = {"context": {"user.satisfaction": round(float(rng.random()), 4), "time.progress": -0.5},
                "candidates": [{"features": {"clickbait": round(float(c), 4)}} for c in rng.random(CANDIDATES)]}
        tails.append(json.dumps(rest).encode()[1:])  # without the opening brace
    return tails


def act_body(session: str, step: int, tails: list[bytes], batch: int) -> bytes:
    def one(s: int) -> bytes:
        return b'{"session_id":"%s","step":%d,%s' % (session.encode(), s, tails[s % len(tails)])

    if batch == 1:
        return one(step)
    return b'{"decisions":[' + b",".join(one(step * batch + k) for k in range(batch)) + b"]}"


async def http_post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str,
                    body: bytes) -> tuple[int, bytes]:
    writer.write(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d"
                 b"\r\n\r\n%s" % (path.encode(), len(body), body))
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    return status, await reader.readexactly(length)


async def load(port: int, connections: int, seconds: float, batch: int, feedback: bool,
               tag: str) -> dict[str, float]:
    """Closed-loop clients for `seconds`; end-to-end latency of each act request (and its feedback)."""
    latencies: list[float] = []
    errors = 0
    decisions = 0
    deadline = time.perf_counter() + seconds

    async def client(c: int) -> None:
        nonlocal errors, decisions
        tails = decision_tails(np.random.default_rng(c))
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        step = 0
        while time.perf_counter() < deadline:
            body = act_body(f"{tag}-{c}", step, tails, batch)
            started = time.perf_counter()
            status, answer = await http_post(reader, writer, "/v1/act", body)
            if status == 200 and feedback:
                decision_id = json.loads(answer)["decision_id"]
                status, _ = await http_post(reader, writer, "/v1/feedback",
                                            b'{"decision_id":"%s","reward":1.0}' % decision_id.encode())
            latencies.append(time.perf_counter() - started)
            errors += status != 200
            decisions += batch
            step += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(connections)))
    elapsed = time.perf_counter() - started
    t = np.array(latencies)
    return {"decisions/s": decisions / elapsed, "p50 ms": 1e3 * np.percentile(t, 50),
            "p99 ms": 1e3 * np.percentile(t, 99), "requests": len(t), "errors": errors}


def scrape(port: int) -> dict[str, float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def where_time_goes(before: dict[str, float], after: dict[str, float]) -> str:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    decisions = delta("reagent_decisions_total")
    handler = delta('reagent_request_latency_seconds_sum{endpoint="/v1/act"}')
    requests = delta('reagent_request_latency_seconds_count{endpoint="/v1/act"}')
    forward = delta("reagent_forward_seconds_total")
    batches = delta("reagent_batch_size_count")
    if not decisions or not batches:
        return ""
    return (f"server: {1e6 * forward / decisions:.0f} us/decision in forward+exploration+journal, "
            f"{decisions / batches:.1f} decisions per forward pass, act handler {1e3 * handler / requests:.2f} ms "
            f"mean (includes waiting for the batch)")


def serve_rows(server: ServerProcess, prefix: str, cases: list[tuple[str, int, bool]],
               args: argparse.Namespace) -> list[tuple[str, dict[str, float], str]]:
    rows = []
    proc, port = server.proc, server.port
    for name, batch, feedback in cases:
        before, cpu = scrape(port), cpu_seconds(proc.pid)
        connections = args.connections if batch == 1 else max(2, args.connections // 8)
        result = asyncio.run(load(port, connections, args.seconds, batch, feedback, f"{batch}{feedback}"))
        server_cpu = cpu_seconds(proc.pid) - cpu
        decisions = result["decisions/s"] * args.seconds
        note = where_time_goes(before, scrape(port))
        note += (f"; server CPU {1e6 * server_cpu / decisions:.0f} us/decision "
                 f"(= {decisions / server_cpu:,.0f} decisions per CPU-second)")
        rows.append((f"{prefix}{name} ({connections} conn.)", result, note))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--export", type=Path, help="a run directory with export/policy.pt (default: a random one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_serve_") as tmp:
        directory = Path(tmp)
        export = args.export or make_export(directory / "run")
        rows = [("bare forward, 1 row/call", bare_forward(export / "export" / "policy.pt", 1, args.seconds), ""),
                (f"bare forward, {args.batch} rows/call",
                 bare_forward(export / "export" / "policy.pt", args.batch, args.seconds), "")]
        single = [("act, 1 decision/request", 1, False), ("act + feedback, 1 decision", 1, True)]
        servers = [("", export, [*single, (f"act, {args.batch} decisions/request", args.batch, False)]),
                   ("history: ", make_export(directory / "history", history=True), single)]
        for prefix, run_dir, cases in servers:
            server = ServerProcess(directory / f"server{prefix[:1]}", run_dir, seed=0,
                                   export_dir=str(run_dir / "export"), exploration="epsilon_greedy", epsilon=0.1,
                                   reload_seconds=0, feedback_timeout_seconds=86400).start()
            try:
                rows += serve_rows(server, prefix, cases, args)
            finally:
                server.stop()
    print(f"\nload average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {args.seconds:g} s per row\n")
    print(f"{'':44s} {'decisions/s':>12s} {'p50 ms':>8s} {'p99 ms':>8s} {'requests':>9s} {'errors':>6s}")
    for name, r, note in rows:
        print(f"{name:44s} {r['decisions/s']:12,.0f} {r['p50 ms']:8.2f} {r['p99 ms']:8.2f} {r['requests']:9,d} "
              f"{r.get('errors', 0):6d}")
        if note:
            print(f"{'':4s}{note}")


if __name__ == "__main__":
    main()
