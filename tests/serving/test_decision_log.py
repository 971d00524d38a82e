"""The decision log on its own: exact schema, replay after a kill at any point, journal rotation."""

from __future__ import annotations

import numpy as np

from reagent_recsys.mdp_writer import check_written, read_mdp
from reagent_recsys.serving.decision_log import JOURNAL_DIR, Decision, DecisionLog

FEATURES = {"features": [{"id": 1, "name": "a", "kind": "context", "slot": None}], "action": {}, "metrics": {}}


def _log(path, **kwargs) -> DecisionLog:
    options = {"max_rows": 1000, "max_seconds": 3600.0, "fsync_seconds": 0.0, "journal_max_bytes": 1 << 30,
               "feedback_timeout": 3600.0, "on_missing": "zero_reward", **kwargs}
    log = DecisionLog(path, **options)
    log.open(FEATURES)
    return log


def _decisions(n: int, start: int = 0) -> list[Decision]:
    return [Decision(f"d{i}", f"s{i // 3}", i % 3, 1.8e9, [1, 2], np.array([i, 0.5], dtype=np.float32), "1", 0.25,
                     ["0", "1"], "v1") for i in range(start, start + n)]


def _flush(log: DecisionLog) -> None:
    plan = log.take_segments()
    log.write_segments(plan)
    log.segments_written(plan)


def test_rows_match_the_mdp_schema(tmp_path):
    log = _log(tmp_path)
    log.add_decisions(_decisions(6))
    log.add_feedback([(f"d{i}", float(i), {"click": 1.0}, "decision_id") for i in range(6)])
    _flush(log)
    log.close()
    check_written(tmp_path)
    rows = read_mdp(tmp_path).to_pylist()
    assert [(r["mdp_id"], r["sequence_number"], r["reward"]) for r in rows] == [
        (f"s{i // 3}", i % 3, float(i)) for i in range(6)]
    assert rows[4]["state_features"] == [(1, 4.0), (2, 0.5)] and rows[4]["possible_actions"] == ["0", "1"]
    assert dict(rows[4]["metrics"]) == {"click": 1.0, "feedback_missing": 0.0}
    assert rows[0]["ds"] == "2027-01-15"


def test_replay_after_a_kill_between_commit_and_segment(tmp_path):
    log = _log(tmp_path)
    log.add_decisions(_decisions(4))
    log.add_feedback([("d0", 1.0, {}, "decision_id"), ("d1", 2.0, {}, "decision_id")])
    plan = log.take_segments()  # the commit line is journaled; the process dies before the segment is renamed
    assert len(plan) == 1
    del log
    again = _log(tmp_path)
    assert sorted(d.decision_id for d in again.complete) == ["d0", "d1"]
    assert sorted(again.pending) == ["d2", "d3"]
    again.add_feedback([("d2", 3.0, {}, "decision_id")])
    _flush(again)
    del again  # killed again after a segment was written: nothing may be logged twice
    third = _log(tmp_path)
    assert not third.complete and sorted(third.pending) == ["d3"]
    third.close()
    assert sorted(r["reward"] for r in read_mdp(tmp_path).to_pylist()) == [1.0, 2.0, 3.0]


def test_torn_last_journal_line_is_ignored(tmp_path):
    log = _log(tmp_path)
    log.add_decisions(_decisions(2))
    journal = sorted((tmp_path / JOURNAL_DIR).glob("*.jsonl"))[-1]
    with open(journal, "ab") as f:
        f.write(b'{"t":"f","id":"d0","rew')  # a write cut by the kill; its response was never sent
    del log
    again = _log(tmp_path)
    assert sorted(again.pending) == ["d0", "d1"]


def test_rotation_carries_open_decisions(tmp_path):
    log = _log(tmp_path, journal_max_bytes=100)
    log.add_decisions(_decisions(5))
    log.add_feedback([("d0", 1.0, {}, "decision_id")])
    _flush(log)  # the journal is over 100 bytes: a new one carrying d1..d4
    journals = sorted((tmp_path / JOURNAL_DIR).glob("*.jsonl"))
    assert len(journals) == 1 and b'"d0"' not in journals[0].read_bytes()
    del log
    again = _log(tmp_path)
    assert sorted(again.pending) == ["d1", "d2", "d3", "d4"]


def test_missing_feedback_rules(tmp_path):
    log = _log(tmp_path / "zero", feedback_timeout=10.0)
    log.add_decisions(_decisions(3))
    assert [d.decision_id for d in log.expire(now=1.8e9 + 11)] == ["d0", "d1", "d2"]
    assert log.counts["feedback_missing_zero_reward"] == 3 and len(log.complete) == 3
    drop = _log(tmp_path / "drop", feedback_timeout=10.0, on_missing="drop")
    drop.add_decisions(_decisions(3))
    assert not drop.expire(now=1.8e9 + 5)
    drop.expire(now=1.8e9 + 11)
    assert drop.counts["feedback_missing_dropped"] == 3 and not drop.complete and not drop.pending
