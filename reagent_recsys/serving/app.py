"""The policy server: a FastAPI (ASGI) app over one event loop.

Requests are parsed and checked in their handlers; the decisions of every request parsed in the same loop turn
are then served by ONE policy forward pass (at most ``serve.max_batch`` rows), so batching adds no waiting and
grows with the load. Each response is sent after its events were written to the decision-log journal.
Background tasks poll the export for a new version, close overdue decisions and write log segments (in a worker
thread). The policy object in use is captured per request, so a hot reload never changes a decision midway.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response

from reagent_recsys.config import PipelineConfig, ServeConfig
from reagent_recsys.serving.decision_log import Decision, DecisionLog, LogConflict
from reagent_recsys.serving.exploration import action_probabilities, sample
from reagent_recsys.serving.metrics import Metrics
from reagent_recsys.serving.policy import FileStamp, LoadedPolicy
from reagent_recsys.serving.requests import (
    ParsedDecisions,
    RequestError,
    parse_decisions,
    parse_feedback,
    parse_json,
)
from reagent_recsys.serving.session import SessionState
from reagent_recsys.serving.session_history import session_state_for

logger = logging.getLogger("reagent_recsys.serve")
MAINTENANCE_SECONDS = 0.05


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status_code=status, media_type="application/json")


def serve_paths(config: PipelineConfig) -> tuple[Path, Path]:
    """(export directory, decision-log directory) of `config.serve`."""
    return config.paths.serve_export, config.paths.decision_log


def build_server(config: PipelineConfig, session_state: SessionState | None = None) -> PolicyServer:
    """The PolicyServer `config.serve` describes (its export, log directory and seed)."""
    export_dir, log_dir = serve_paths(config)
    return PolicyServer(config.serve, export_dir, log_dir, config.seed, session_state)


@dataclass
class _Pending:
    parsed: ParsedDecisions
    policy: LoadedPolicy
    future: asyncio.Future


class PolicyServer:
    """Everything one server process holds: the policy, the log, the exploration RNG and the metrics."""

    def __init__(self, config: ServeConfig, export_dir: Path, log_dir: Path, seed: int,
                 session_state: SessionState | None = None) -> None:
        self.config = config
        self.policy_path = export_dir / "policy.pt"
        if not self.policy_path.exists():
            raise FileNotFoundError(f"{self.policy_path}: no exported policy; run workflow.export first")
        torch.set_num_threads(config.torch_threads)
        self.policy = LoadedPolicy(self.policy_path)
        self.rng = np.random.default_rng(seed)
        self.session_state = session_state or session_state_for(self.policy.layout, config.on_missing_feedback,
                                                                config.sessions)
        flush = config.flush
        self.log = DecisionLog(log_dir, max_rows=flush.max_rows, max_seconds=flush.max_seconds,
                               fsync_seconds=flush.fsync_seconds, journal_max_bytes=flush.journal_max_bytes,
                               feedback_timeout=config.feedback_timeout_seconds, on_missing=config.on_missing_feedback)
        self.metrics = Metrics()
        self.queue: list[_Pending] = []
        self.scheduled = False
        self.ids = (f"{self.log.run}-{n:x}" for n in itertools.count())
        self.writing: asyncio.Task | None = None

    # ------------------------------------------------------------------------------------------ act
    async def handle(self, endpoint: str, body: bytes) -> tuple[int, bytes]:
        """(status, JSON body) of a POST to /v1/act or /v1/feedback; client mistakes are 4xx naming the field."""
        started = time.perf_counter()
        try:
            if endpoint == "/v1/act":
                status, payload = 200, await self.act(body)
            else:
                status, payload = 200, self.feedback(body)
        except (RequestError, LogConflict) as exc:
            status, payload = exc.status, {"error": exc.message, "field": exc.field}
        except Exception as exc:  # a server fault, never a client mistake
            logger.exception("%s failed", endpoint)
            status, payload = 500, {"error": f"internal error: {type(exc).__name__}"}
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.metrics.request(endpoint, status, time.perf_counter() - started)
        return status, data

    async def act(self, body: bytes) -> Any:
        policy = self.policy  # the version that will decide this request
        parsed = parse_decisions(parse_json(body), policy.layout, self.config.allow_missing_features,
                                 self.session_state.provided)
        future = asyncio.get_running_loop().create_future()
        self.queue.append(_Pending(parsed, policy, future))
        if not self.scheduled:
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._serve_queue)
        results = await future
        return {"decisions": results} if parsed.batched else results[0]

    def _serve_queue(self) -> None:
        self.scheduled = False
        queue, self.queue = self.queue, []
        batch: list[_Pending] = []
        rows = 0
        sequential = self.session_state.sequential
        sessions: set[str] = set()  # of the batch, when one session's decisions must be served one after another
        for item in queue:
            if batch and (rows + len(item.parsed.steps) > self.config.max_batch or item.policy is not batch[0].policy
                          or (sequential and not sessions.isdisjoint(item.parsed.session_ids))):
                self._serve_batch(batch)
                batch, rows = [], 0
                sessions.clear()
            batch.append(item)
            rows += len(item.parsed.steps)
            if sequential:
                sessions.update(item.parsed.session_ids)
        if batch:
            self._serve_batch(batch)

    def _serve_batch(self, batch: list[_Pending]) -> None:
        try:
            self._decide(batch)
        except Exception as exc:  # a server fault: every waiting request gets its 500
            logger.exception("serving a batch failed")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)

    def _decide(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        policy = batch[0].policy
        layout = policy.layout
        filled = []
        for item in batch:
            try:
                self.session_state.fill(item.parsed, layout)
            except RequestError as exc:  # refused by the session state (e.g. an ended session): that request only
                item.future.set_exception(exc)
                continue
            filled.append(item)
        if not filled:
            return
        batch = filled
        values = np.concatenate([b.parsed.values for b in batch])  # (B, F)
        presence = np.concatenate([b.parsed.presence for b in batch])
        mask = np.concatenate([b.parsed.mask for b in batch])  # (B, A)
        q, greedy = policy.forward(values, presence, mask)
        cfg = self.config
        probs = action_probabilities(q, mask, greedy, cfg.exploration, cfg.temperature, cfg.epsilon)
        actions, propensities = sample(probs, self.rng)
        now = time.time()
        accepted: list[Decision] = []
        answers: list[tuple[_Pending, list[dict[str, Any]]]] = []
        reserved: set[tuple[str, int]] = set()
        offset = 0
        for item in batch:
            p = item.parsed
            n = len(p.steps)
            rows = range(offset, offset + n)
            offset += n
            fields = [f"decisions[{i}].step" if p.batched else "step" for i in range(n)]
            try:
                self.log.check_new(list(zip(p.session_ids, p.steps, strict=True)), fields, reserved)
            except LogConflict as exc:
                item.future.set_exception(exc)
                continue
            results = []
            for i, r in enumerate(rows):
                present = presence[r] != 0
                action = int(actions[r])
                decision = Decision(
                    decision_id=next(self.ids), mdp_id=p.session_ids[i], sequence_number=p.steps[i], ts=now,
                    feature_ids=policy.shared_ids(present), values=values[r, present],
                    action=layout.action_names[action], propensity=float(propensities[r]),
                    possible=policy.shared_actions(mask[r]), version=policy.version)
                accepted.append(decision)
                result = {"decision_id": decision.decision_id, "action": decision.action,
                          "propensity": decision.propensity, "policy_version": policy.version}
                candidates = p.candidate_ids[i]
                if candidates is not None:
                    slot = int(np.flatnonzero(layout.slot_actions == action)[0]) if len(layout.slot_actions) \
                        else action
                    result["candidate"] = slot
                    if candidates[slot] is not None:
                        result["candidate_id"] = candidates[slot]
                results.append(result)
            answers.append((item, results))
        self.log.add_decisions(accepted)  # journaled before any response is released
        self.session_state.observe_decisions(accepted, layout)
        for item, results in answers:
            item.future.set_result(results)
        self.metrics.decisions += len(accepted)
        self.metrics.batch_size.observe(len(actions))
        self.metrics.forward_seconds += time.perf_counter() - started

    # ------------------------------------------------------------------------------------- feedback
    def feedback(self, body: bytes) -> dict[str, int]:
        items, batched = parse_feedback(parse_json(body))
        joined = self.log.add_feedback([(f.decision_id, f.reward, f.metrics, f.field) for f in items])
        self.session_state.observe_feedback(joined)
        return {"joined": len(items)}

    # ---------------------------------------------------------------------------------- background
    async def maintain(self) -> None:
        """Close overdue decisions, fsync the journal and roll segments, forever."""
        while True:
            await asyncio.sleep(MAINTENANCE_SECONDS)
            try:
                closed = self.log.expire()
                if closed:
                    self.session_state.observe_feedback(closed)
                self.session_state.maintain()
                if self.log.fsync_due():
                    self.log.fsync()
                if self.writing is None and self.log.segment_due():
                    self.writing = asyncio.create_task(self._write_segments())
            except Exception:
                logger.exception("decision log maintenance failed")

    async def _write_segments(self) -> None:
        try:
            plan = self.log.take_segments()
            written = 0
            try:
                for item in plan:
                    await asyncio.to_thread(self.log.write_segments, [item])
                    written += 1
            except Exception:
                logger.exception("writing a decision-log segment failed; its rows are kept and retried")
                self.log.segments_failed(plan[written:])
            self.log.segments_written(plan[:written])
        finally:
            self.writing = None

    async def watch_export(self) -> None:
        """Load a new policy version when the export changes (e.g. workflow.export swapped the directory)."""
        while True:
            await asyncio.sleep(self.config.reload_seconds)
            try:
                stamp = FileStamp.of(self.policy_path)
            except FileNotFoundError:  # mid-swap: look again next time
                continue
            if stamp == self.policy.stamp:
                continue
            try:
                policy = await asyncio.to_thread(LoadedPolicy, self.policy_path)
            except FileNotFoundError:
                continue
            except Exception:
                self.metrics.reload_failures += 1
                logger.exception("loading %s failed; version %s keeps serving", self.policy_path, self.policy.version)
                self.policy = _restamped(self.policy, stamp)  # do not retry the same broken file
                continue
            try:
                self.session_state.check_layout(policy.layout)
            except ValueError as exc:
                self.metrics.reload_failures += 1
                logger.error("not serving %s version %s: %s; version %s keeps serving", self.policy_path,
                             policy.version, exc, self.policy.version)
                self.policy = _restamped(self.policy, stamp)
                continue
            if policy.version != self.policy.version:
                self.log.update_features(policy.layout.features_description())
                self.metrics.reloads += 1
                logger.warning("serving policy version %s (was %s)", policy.version, self.policy.version)
            self.policy = policy

    async def stop(self) -> None:
        if self.writing is not None:
            await self.writing
        self.log.close()


def _restamped(policy: LoadedPolicy, stamp: FileStamp) -> LoadedPolicy:
    policy.stamp = stamp
    return policy


def create_app(server: PolicyServer) -> FastPaths:
    """The ASGI app of `server`: /v1/act, /v1/feedback, /healthz, /metrics (FastAPI behind a fast path)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        recovered = server.log.open(server.policy.layout.features_description())
        server.session_state.open(mdp_id for mdp_id, _ in server.log.keys)  # read only by history state
        if recovered["pending"] or recovered["complete"]:
            logger.warning("decision log: recovered %d decisions awaiting feedback and %d complete rows from the "
                           "journal", recovered["pending"], recovered["complete"])
        tasks = [asyncio.create_task(server.maintain())]
        if server.config.reload_seconds > 0:
            tasks.append(asyncio.create_task(server.watch_export()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.stop()

    app = FastAPI(title="reagent_recsys policy server", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.post("/v1/act")
    async def act(request: Request) -> Response:
        status, data = await server.handle("/v1/act", await request.body())
        return Response(data, status_code=status, media_type="application/json")

    @app.post("/v1/feedback")
    async def feedback(request: Request) -> Response:
        status, data = await server.handle("/v1/feedback", await request.body())
        return Response(data, status_code=status, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok", "policy_version": server.policy.version, "pid": os.getpid(),
                      "pending": len(server.log.pending)})

    @app.get("/metrics")
    async def metrics() -> Response:
        text = server.metrics.render(server.policy.version, server.log.counts, len(server.log.pending),
                                     server.session_state.stats())
        return Response(text, media_type="text/plain; version=0.0.4")

    return FastPaths(server, app)


MAX_BODY_BYTES = 64 << 20
_JSON_HEADERS = [(b"content-type", b"application/json")]


class FastPaths:
    """A plain ASGI callable: POST /v1/act and /v1/feedback go straight to the server (no routing, no Request
    objects: half the per-request CPU of a FastAPI route, measured by benchmarks/bench_serve.py); every other
    request, and the lifespan, go to the FastAPI app (which also routes the two endpoints, with the same
    handler, when it is used on its own)."""

    def __init__(self, server: PolicyServer, app: FastAPI) -> None:
        self.server, self.app = server, app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path")
        if scope["type"] != "http" or scope["method"] != "POST" or path not in ("/v1/act", "/v1/feedback"):
            await self.app(scope, receive, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            more = message.get("more_body", False)
        if size > MAX_BODY_BYTES:
            status, data = 413, json.dumps({"error": f"body over {MAX_BODY_BYTES} bytes", "field": "body"}).encode()
        else:
            status, data = await self.server.handle(path, b"".join(chunks))
        await send({"type": "http.response.start", "status": status,
                    "headers": [*_JSON_HEADERS, (b"content-length", b"%d" % len(data))]})
        await send({"type": "http.response.body", "body": data})
