"""The server's decision log: an mdp table (schema.MDP) that workflow.timeline_operator reads as is.

Layout under the log directory::

    ds=<UTC date>/part-<run>-<n>.parquet   complete rows (decision + feedback), one segment per flush
    _features.json, _manifest.json         what the features mean; rows and feedback counts
    _journal/journal-<n>.jsonl             every decision and feedback event, in order

Every event is written to the journal (one unbuffered write per batch) BEFORE the server answers, so a killed
process (SIGKILL) loses no acknowledged decision or feedback: on restart the journal is replayed and decisions
still awaiting feedback wait again. ``flush.fsync_seconds`` bounds what a machine crash can lose. Complete rows
wait in memory until ``flush.max_rows`` of them or ``flush.max_seconds`` (the segment roll); a segment is
written to a temporary name and renamed, after a commit line naming it and its decision ids is journaled, so a
replay skips exactly the decisions whose segment exists. Files and directories starting with ``_`` or ``.``
are ignored by Spark and pyarrow, so the directory reads as a plain mdp table.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reagent_recsys.artifacts import write_json_atomic
from reagent_recsys.mdp_writer import (
    ACTION_LIST,
    METRICS_MAP,
    PARQUET_OPTIONS,
    STATE_MAP,
    file_schema,
    mdp_dataset,
)
from reagent_recsys.schema import FEATURES_FILE, MANIFEST_FILE

JOURNAL_DIR = "_journal"
MISSING = "feedback_missing"
CLOSED_IDS_KEPT = 1_000_000  # feedback for a decision closed longer ago than this many closures ago is a 404


class RecentIds:
    """A set that remembers only its newest `capacity` members (insertion order)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def add(self, item: str) -> None:
        self._ids[item] = None
        if len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]

    def __contains__(self, item: object) -> bool:
        return item in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class LogConflict(ValueError):
    """A request the log must refuse (HTTP `status`), naming the field."""

    def __init__(self, field: str, message: str, status: int) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status = field, message, status


@dataclass(slots=True)
class Decision:
    """One served decision; `reward` is None until its feedback arrives. Compact: `feature_ids` and `possible`
    are shared between decisions with the same presence pattern and possible actions."""

    decision_id: str
    mdp_id: str
    sequence_number: int
    ts: float  # unix seconds when served
    feature_ids: list[int]  # the features given (present), ...
    values: np.ndarray  # ... (K,) float32 their values
    action: str
    propensity: float
    possible: list[str]
    version: str
    reward: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def ds(self) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(self.ts))

    def event(self) -> dict[str, Any]:
        return {"t": "d", "id": self.decision_id, "mdp_id": self.mdp_id, "seq": self.sequence_number, "ts": self.ts,
                "ids": self.feature_ids, "values": self.values.tolist(), "action": self.action, "p": self.propensity,
                "possible": self.possible, "version": self.version}

    @classmethod
    def from_event(cls, e: dict[str, Any]) -> Decision:
        return cls(e["id"], e["mdp_id"], e["seq"], e["ts"], e["ids"], np.asarray(e["values"], dtype=np.float32),
                   e["action"], e["p"], e["possible"], e["version"])


def segment_table(rows: list[Decision]) -> pa.Table:
    """Complete rows -> an Arrow table of mdp_writer.file_schema() (MDP without the `ds` partition column)."""
    rows = sorted(rows, key=lambda r: (r.mdp_id, r.sequence_number))
    lengths = np.fromiter((len(r.feature_ids) for r in rows), dtype=np.int32, count=len(rows))
    offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int32)]).astype(np.int32)
    keys = np.fromiter((k for r in rows for k in r.feature_ids), dtype=np.int64, count=int(offsets[-1]))
    values = np.concatenate([r.values for r in rows]).astype(np.float32, copy=False)
    entries = pa.StructArray.from_arrays([pa.array(keys), pa.array(values)],
                                         fields=[STATE_MAP.key_field, STATE_MAP.item_field])
    state = pa.Array.from_buffers(STATE_MAP, len(rows), [None, pa.py_buffer(offsets)], children=[entries])
    arrays = [
        pa.array([r.mdp_id for r in rows], pa.string()),
        pa.array([r.sequence_number for r in rows], pa.int64()),
        state,
        pa.array([r.action for r in rows], pa.string()),
        pa.array([r.propensity for r in rows], pa.float64()),
        pa.array([r.reward for r in rows], pa.float64()),
        pa.array([r.possible for r in rows], ACTION_LIST),
        pa.array([sorted(r.metrics.items()) for r in rows], METRICS_MAP),
    ]
    return pa.Table.from_arrays(arrays, schema=file_schema())


class DecisionLog:
    """Pending decisions, complete rows, the journal and the segments. Not thread-safe: one event loop owns it,
    except `write_segments`, which only touches files and may run in a worker thread."""

    def __init__(self, log_dir: str | Path, *, max_rows: int, max_seconds: float, fsync_seconds: float,
                 journal_max_bytes: int, feedback_timeout: float, on_missing: str) -> None:
        self.dir = Path(log_dir)
        self.max_rows, self.max_seconds = max_rows, max_seconds
        self.fsync_seconds, self.journal_max_bytes = fsync_seconds, journal_max_bytes
        self.feedback_timeout, self.on_missing = feedback_timeout, on_missing
        self.pending: dict[str, Decision] = {}  # decision id -> decision awaiting feedback (insertion = time order)
        self.complete: list[Decision] = []  # rows waiting for the next segment
        self.complete_since: float | None = None
        self.keys: set[tuple[str, int]] = set()  # (mdp_id, sequence_number) of every decision in the log
        self.closed_ids = RecentIds(CLOSED_IDS_KEPT)  # decisions already closed (409 rather than 404)
        self.run = f"{int(time.time() * 1000):013d}"
        self.segment_count = 0
        self.counts = {"rows": 0, "segments": 0, "feedback_joined": 0, "feedback_missing_zero_reward": 0,
                       "feedback_missing_dropped": 0, "decisions": 0}
        self.rows_by_version: dict[str, int] = {}
        self._journal: Any = None
        self._journal_index = 0
        self._dirty_since: float | None = None

    # ------------------------------------------------------------------------------------------- startup
    def open(self, features: dict[str, Any]) -> dict[str, int]:
        """Create or reopen the log: read the manifest and existing keys, replay the journal; returns what was
        recovered."""
        (self.dir / JOURNAL_DIR).mkdir(parents=True, exist_ok=True)
        self._merge_features(features)
        manifest = self.dir / MANIFEST_FILE
        if manifest.exists():
            old = json.loads(manifest.read_text())
            self.counts.update({k: int(old.get(k, 0)) for k in self.counts})
            self.rows_by_version.update(old.get("rows_by_version", {}))
        if any(self.dir.glob("ds=*/*.parquet")):
            keys = mdp_dataset(self.dir).to_table(columns=["mdp_id", "sequence_number"])
            self.keys.update(zip(keys.column(0).to_pylist(), keys.column(1).to_pylist(), strict=True))
        recovered = self._replay()
        self._journal_index += 1
        self._journal = open(self._journal_path(self._journal_index), "ab", buffering=0)  # noqa: SIM115
        # carry what is still open into the new journal, then drop the old ones
        self._rotate_carry()
        return recovered

    def update_features(self, features: dict[str, Any]) -> None:
        """Add the features of a newly loaded policy version to `_features.json`."""
        self._merge_features(features)

    def _merge_features(self, features: dict[str, Any]) -> None:
        path = self.dir / FEATURES_FILE
        if path.exists():
            old = json.loads(path.read_text())
            known = {f["id"] for f in features["features"]}
            features = {**features, "features": features["features"] + [
                f for f in old.get("features", []) if f["id"] not in known]}
        write_json_atomic(path, features)

    def _journal_path(self, index: int) -> Path:
        return self.dir / JOURNAL_DIR / f"journal-{index:06d}.jsonl"

    def _journals(self) -> list[Path]:
        return sorted((self.dir / JOURNAL_DIR).glob("journal-*.jsonl"))

    def _replay(self) -> dict[str, int]:
        decisions: dict[str, Decision] = {}
        done: set[str] = set()
        for path in self._journals():
            self._journal_index = max(self._journal_index, int(path.stem.split("-")[1]))
            for line in path.read_bytes().splitlines():
                try:
                    event = json.loads(line)
                except ValueError:  # a torn last line of a killed writer: its response was never sent
                    continue
                kind = event["t"]
                if kind == "d":
                    decisions[event["id"]] = Decision.from_event(event)
                elif kind == "f" and event["id"] in decisions:
                    d = decisions[event["id"]]
                    d.reward, d.metrics = event["reward"], event["metrics"]
                elif kind == "x":
                    done.add(event["id"])
                elif kind == "c" and (self.dir / event["segment"]).exists():
                    done.update(event["ids"])
        for decision_id, d in decisions.items():
            if decision_id in done:
                self.closed_ids.add(decision_id)
                continue
            self.keys.add((d.mdp_id, d.sequence_number))
            if d.reward is None:
                self.pending[decision_id] = d
            else:
                self.closed_ids.add(decision_id)
                self.complete.append(d)
        if self.complete:
            self.complete_since = time.time()
        return {"pending": len(self.pending), "complete": len(self.complete)}

    def _rotate_carry(self) -> None:
        """Write every open decision (pending or complete, not yet in a segment) to the current journal and
        delete the older journals."""
        events = []
        for d in [*self.pending.values(), *self.complete]:
            events.append(d.event())
            if d.reward is not None:
                events.append({"t": "f", "id": d.decision_id, "reward": d.reward, "metrics": d.metrics})
        self._write(events)
        self.fsync()
        current = self._journal_path(self._journal_index)
        for path in self._journals():
            if path != current:
                path.unlink()

    # ------------------------------------------------------------------------------------------- events
    def _write(self, events: list[dict[str, Any]]) -> None:
        if events:
            self._journal.write(b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events))
            if self._dirty_since is None:
                self._dirty_since = time.monotonic()
            if self.fsync_seconds == 0:
                self.fsync()

    def fsync(self) -> None:
        if self._journal is not None and self._dirty_since is not None:
            os.fsync(self._journal.fileno())
            self._dirty_since = None

    def fsync_due(self) -> bool:
        return self._dirty_since is not None and time.monotonic() - self._dirty_since >= self.fsync_seconds

    def check_new(self, keys: list[tuple[str, int]], fields: list[str], reserved: set[tuple[str, int]]) -> None:
        """Refuse (409) a decision whose (session_id, step) is already in the log, in `reserved` (accepted earlier
        in the same batch) or twice in the request; on success the keys are added to `reserved`."""
        seen: set[tuple[str, int]] = set()
        for key, where in zip(keys, fields, strict=True):
            if key in self.keys or key in seen or key in reserved:
                raise LogConflict(where, f"session {key[0]!r} step {key[1]} was already decided (each step of a "
                                  "session is decided once)", 409)
            seen.add(key)
        reserved.update(seen)

    def add_decisions(self, decisions: list[Decision]) -> None:
        """Journal and hold decisions (call check_new first)."""
        self._write([d.event() for d in decisions])
        for d in decisions:
            self.pending[d.decision_id] = d
            self.keys.add((d.mdp_id, d.sequence_number))
        self.counts["decisions"] += len(decisions)

    def add_feedback(self, items: list[tuple[str, float, dict[str, float], str]]) -> list[Decision]:
        """Join (decision id, reward, metrics, field) to pending decisions; all or nothing (404/409 first)."""
        seen: set[str] = set()
        for decision_id, _, _, where in items:
            if decision_id in seen or (decision_id not in self.pending and decision_id in self.closed_ids):
                raise LogConflict(where, f"decision {decision_id!r} already has its feedback (or timed out)", 409)
            if decision_id not in self.pending:
                raise LogConflict(where, f"unknown decision id {decision_id!r}", 404)
            seen.add(decision_id)
        joined = [(i, r, {**m, MISSING: 0.0}) for i, r, m, _ in items]
        self._write([{"t": "f", "id": i, "reward": r, "metrics": m} for i, r, m in joined])
        closed = []
        for decision_id, reward, metrics in joined:
            d = self.pending.pop(decision_id)
            d.reward, d.metrics = reward, metrics
            self._close(d)
            closed.append(d)
        self.counts["feedback_joined"] += len(items)
        return closed

    def _close(self, d: Decision) -> None:
        self.closed_ids.add(d.decision_id)
        if not self.complete:
            self.complete_since = time.time()
        self.complete.append(d)

    def expire(self, now: float | None = None) -> list[Decision]:
        """Close the decisions whose feedback is overdue by `on_missing`; returns them."""
        now = time.time() if now is None else now
        overdue = []
        for d in self.pending.values():  # insertion order = serving order (replayed ones first)
            if now - d.ts < self.feedback_timeout:
                break
            overdue.append(d)
        if not overdue:
            return overdue
        if self.on_missing == "drop":
            self._write([{"t": "x", "id": d.decision_id} for d in overdue])
            for d in overdue:
                del self.pending[d.decision_id]
                self.closed_ids.add(d.decision_id)
            self.counts["feedback_missing_dropped"] += len(overdue)
        else:
            self._write([{"t": "f", "id": d.decision_id, "reward": 0.0, "metrics": {MISSING: 1.0}} for d in overdue])
            for d in overdue:
                del self.pending[d.decision_id]
                d.reward, d.metrics = 0.0, {MISSING: 1.0}
                self._close(d)
            self.counts["feedback_missing_zero_reward"] += len(overdue)
        return overdue

    # ----------------------------------------------------------------------------------------- segments
    def segment_due(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        return bool(self.complete) and (
            len(self.complete) >= self.max_rows or now - (self.complete_since or now) >= self.max_seconds)

    def take_segments(self) -> list[tuple[str, list[Decision]]]:
        """Hand the complete rows over for writing, as (relative segment path, rows) per `ds`, and journal the
        commit lines naming them. Then call write_segments (any thread) and segments_written (this thread)."""
        rows, self.complete, self.complete_since = self.complete, [], None
        by_ds: dict[str, list[Decision]] = {}
        for d in rows:
            by_ds.setdefault(d.ds, []).append(d)
        plan = []
        for ds, part in sorted(by_ds.items()):
            for start in range(0, len(part), self.max_rows):
                chunk = part[start:start + self.max_rows]
                self.segment_count += 1
                plan.append((f"ds={ds}/part-{self.run}-{self.segment_count:06d}.parquet", chunk))
        self._write([{"t": "c", "segment": path, "ids": [d.decision_id for d in chunk]} for path, chunk in plan])
        return plan

    def write_segments(self, plan: list[tuple[str, list[Decision]]]) -> None:
        """Write each segment to a temporary name and rename it into place (file I/O only; thread-safe)."""
        for relative, rows in plan:
            final = self.dir / relative
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.parent / f".{final.name}.tmp"
            pq.write_table(segment_table(rows), tmp, **PARQUET_OPTIONS)
            os.replace(tmp, final)

    def segments_failed(self, plan: list[tuple[str, list[Decision]]]) -> None:
        """Put the rows of a plan whose write failed back in front of the complete rows (retried next roll; the
        journal still holds them for a restart)."""
        rows = [d for _, chunk in plan for d in chunk]
        self.complete = rows + self.complete
        self.complete_since = self.complete_since or time.time()

    def segments_written(self, plan: list[tuple[str, list[Decision]]]) -> None:
        for _, rows in plan:
            self.counts["rows"] += len(rows)
            self.counts["segments"] += 1
            for d in rows:
                self.rows_by_version[d.version] = self.rows_by_version.get(d.version, 0) + 1
        self.write_manifest()
        if self._journal_path(self._journal_index).stat().st_size > self.journal_max_bytes:
            self._journal.close()
            self._journal_index += 1
            self._journal = open(self._journal_path(self._journal_index), "ab", buffering=0)  # noqa: SIM115
            self._rotate_carry()

    def write_manifest(self) -> None:
        write_json_atomic(self.dir / MANIFEST_FILE, {
            "table": "mdp", "path": str(self.dir), **self.counts, "pending": len(self.pending),
            "unwritten_complete": len(self.complete), "rows_by_version": self.rows_by_version,
            "on_missing_feedback": self.on_missing, "feedback_timeout_seconds": self.feedback_timeout,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })

    def flush_all(self) -> None:
        """Write every complete row now (in this thread) and fsync the journal: the SIGTERM path."""
        if self.complete:
            plan = self.take_segments()
            self.write_segments(plan)
            self.segments_written(plan)
        else:
            self.write_manifest()
        self.fsync()

    def close(self) -> None:
        self.flush_all()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
