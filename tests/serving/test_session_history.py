"""The server's per-session history state on its own: the features it fills equal the definition (numpy_history)
on the served steps, late and missing feedback, expiry (idle and LRU), ordering rules, and the 4xx it answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from reagent_recsys.config import ConfigError, ServeSessionsConfig
from reagent_recsys.history import HistorySpec, numpy_history, spec_to_dict
from reagent_recsys.serving.decision_log import Decision
from reagent_recsys.serving.policy import Layout
from reagent_recsys.serving.requests import RequestError, parse_decisions
from reagent_recsys.serving.session import SessionState
from reagent_recsys.serving.session_history import HistorySessionState, session_state_for
from tests.serving.helpers import decision
from tests.serving.history_helpers import HISTORY_IDS, SPEC, history_metadata, reference_features

LAYOUT = Layout.from_metadata(history_metadata())
COLUMNS = [LAYOUT.feature_ids.tolist().index(i) for i in HISTORY_IDS]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """What the app does around the session state, without HTTP: parse, fill, decide, observe, feedback."""

    def __init__(self, max_sessions: int = 100, idle_seconds: float = 60.0) -> None:
        self.clock = Clock()
        self.state = HistorySessionState(LAYOUT.history, ServeSessionsConfig(max_sessions=max_sessions,
                                                                             idle_seconds=idle_seconds), self.clock)
        self.ids = (f"d{n}" for n in itertools.count())
        self.rng = np.random.default_rng(0)

    def act(self, *requests: dict) -> list[tuple[Decision, np.ndarray]]:
        body = {"decisions": list(requests)} if len(requests) > 1 else requests[0]
        parsed = parse_decisions(body, LAYOUT, provided=self.state.provided)
        self.state.fill(parsed, LAYOUT)
        out = []
        for i, request in enumerate(requests):
            present = parsed.presence[i] != 0
            action = str(self.rng.integers(4))
            out.append((Decision(next(self.ids), request["session_id"], request["step"], 0.0,
                                 LAYOUT.feature_ids[present].tolist(), parsed.values[i, present], action, 0.25,
                                 ["0", "1", "2", "3"], "v"), parsed.values[i, COLUMNS].copy()))
        self.state.observe_decisions([d for d, _ in out], LAYOUT)
        return out

    def feedback(self, d: Decision, reward: float, metrics: dict[str, float]) -> None:
        d.reward, d.metrics = reward, metrics
        self.state.observe_feedback([d])


def _request(session: str, step: int, rng: np.random.Generator) -> dict:
    return decision(session, step, rng.random(4).round(3).tolist(),
                    **{"user.satisfaction": round(float(rng.random()), 3)})


def test_filled_features_equal_the_definition_on_interleaved_sessions_with_gaps():
    h = Harness()
    rng = np.random.default_rng(1)
    served: dict[str, list[dict]] = {}
    steps = {f"s{k}": np.cumsum(rng.integers(1, 3, 8)).tolist() for k in range(3)}  # gaps in step numbers
    for t in range(8):
        for session in steps:
            request = _request(session, steps[session][t], rng)
            (d, seen), = h.act(request)
            reward, metrics = float(rng.normal()), {"click": float(rng.random() < 0.4), "feedback_missing": 0.0}
            h.feedback(d, reward, metrics)
            served.setdefault(session, []).append({"request": request, "action": d.action, "reward": reward,
                                                   "metrics": metrics, "seen": seen})
    for steps_served in served.values():
        np.testing.assert_array_equal(np.stack([s["seen"] for s in steps_served]), reference_features(steps_served))
    assert h.state.counts["served_before_feedback"] == 0


def test_late_feedback_counts_as_zero_until_it_arrives_and_a_timeout_is_reward_zero():
    spec = HistorySpec(sums=("reward",), decays=(1.0,), counts=("metric.feedback_missing",))
    layout = Layout.from_metadata({**history_metadata(spec)})
    state = HistorySessionState(layout.history, ServeSessionsConfig())
    columns = [layout.feature_ids.tolist().index(i) for i in layout.history["ids"]]

    def act(step: int) -> tuple[Decision, list[float]]:
        parsed = parse_decisions(decision("u", step), layout, provided=state.provided)
        state.fill(parsed, layout)
        d = Decision(f"d{step}", "u", step, 0.0, layout.feature_ids.tolist(), parsed.values[0], "1", 1.0, ["1"], "v")
        state.observe_decisions([d], layout)
        return d, parsed.values[0, columns].tolist()

    d0, seen = act(0)
    assert seen == [0.0, 0.0]
    d1, seen = act(1)  # d0's feedback has not arrived: its reward counts 0 for now
    assert seen == [0.0, 0.0] and state.counts["served_before_feedback"] == 1
    d1.reward, d1.metrics = 2.0, {"feedback_missing": 0.0}
    state.observe_feedback([d1])  # out of order: d1 before d0
    d0.reward, d0.metrics = 0.0, {"feedback_missing": 1.0}  # d0 timed out (on_missing_feedback: zero_reward)
    state.observe_feedback([d0])
    _, seen = act(2)
    assert seen == [2.0, 1.0]  # as the table computes it: rewards 0 + 2, one missing feedback


def test_many_steps_awaiting_feedback_in_any_order():
    """Each decision sees the earlier steps' rewards known so far (0 for those still awaited), exactly."""
    spec = HistorySpec(sums=("reward",), decays=(0.5, 1.0), counts=("step",), since=("metric.click",))
    layout = Layout.from_metadata(history_metadata(spec))
    state = HistorySessionState(layout.history, ServeSessionsConfig())
    columns = [layout.feature_ids.tolist().index(i) for i in layout.history["ids"]]
    rng = np.random.default_rng(5)
    rewards, clicks = rng.normal(size=40).round(3), (rng.random(40) < 0.3).astype(float)
    known: set[int] = set()
    awaiting: list[Decision] = []
    for t in range(40):
        parsed = parse_decisions(decision("u", t), layout, provided=state.provided)
        state.fill(parsed, layout)
        x = np.array([[rewards[k] if k in known else 0.0, 1.0, clicks[k] if k in known else 0.0] for k in range(t)]
                     + [[0.0, 1.0, 0.0]])
        expected = numpy_history(np.zeros(t + 1, dtype=np.int64), np.arange(t + 1), x, spec)[t]
        np.testing.assert_array_equal(parsed.values[0, columns], expected)
        d = Decision(f"d{t}", "u", t, 0.0, layout.feature_ids.tolist(), parsed.values[0], "1", 1.0, ["1"], "v")
        state.observe_decisions([d], layout)
        awaiting.append(d)
        if t >= 20:  # feedback starts late, then arrives a few at a time in shuffled order
            for k in rng.permutation(len(awaiting))[:rng.integers(0, 4)].tolist():
                d = awaiting[k]
                d.reward, d.metrics = float(rewards[d.sequence_number]), {"click": clicks[d.sequence_number]}
                state.observe_feedback([d])
                known.add(d.sequence_number)
            awaiting = [d for d in awaiting if d.sequence_number not in known]


def test_idle_and_lru_sessions_end_and_are_refused_with_409():
    h = Harness(max_sessions=2, idle_seconds=10.0)
    rng = np.random.default_rng(2)
    h.act(_request("a", 0, rng))
    h.clock.now += 6
    h.act(_request("b", 0, rng))
    h.clock.now += 6
    h.state.maintain()  # "a" idle for 12 s > 10 s
    assert list(h.state.sessions) == ["b"] and h.state.counts["sessions_ended_idle"] == 1
    with pytest.raises(RequestError) as refused:
        h.act(_request("a", 1, rng))
    assert (refused.value.status, refused.value.field) == (409, "session_id") and "ended" in refused.value.message
    h.act(_request("b", 1, rng))
    h.act(_request("c", 0, rng))
    h.act(_request("d", 0, rng))  # a third live session: "b" (least recently used) ends
    assert list(h.state.sessions) == ["c", "d"] and h.state.counts["sessions_ended_lru"] == 1
    with pytest.raises(RequestError, match="'b' ended"):
        h.act(_request("b", 2, rng))
    h.clock.now += 11  # idle, not yet swept by maintain: refused all the same
    with pytest.raises(RequestError, match="'c' ended"):
        h.act(_request("c", 1, rng))
    assert h.state.stats()["refused_ended"] == 3


def test_feedback_of_an_ended_session_is_ignored():
    h = Harness(max_sessions=1)
    rng = np.random.default_rng(3)
    (d, _), = h.act(_request("a", 0, rng))
    h.act(_request("b", 0, rng))  # "a" ends (LRU)
    h.feedback(d, 1.0, {"feedback_missing": 0.0})  # joined in the log; nothing to update here
    assert list(h.state.sessions) == ["b"]


def test_steps_in_order_one_per_session_per_request_and_sessions_from_before_a_restart():
    h = Harness()
    rng = np.random.default_rng(4)
    h.act(_request("a", 3, rng))
    for step in (3, 2):
        with pytest.raises(RequestError) as refused:
            h.act(_request("a", step, rng))
        assert (refused.value.status, refused.value.field) == (409, "step")
    with pytest.raises(RequestError) as refused:
        h.act(_request("x", 0, rng), _request("x", 1, rng))
    assert (refused.value.status, refused.value.field) == (422, "decisions[1].session_id")
    h.state.open({"old"})
    with pytest.raises(RequestError, match="before this server started") as refused:
        h.act(_request("old", 9, rng))
    assert refused.value.field == "session_id"
    h.act(_request("a", 7, rng), _request("new", 0, rng))  # one step per session: fine


def test_a_client_sent_history_feature_is_422_naming_it():
    state = HistorySessionState(LAYOUT.history, ServeSessionsConfig())
    name = SPEC.names[3]
    body = decision("a", 0, **{name: 1.0})
    with pytest.raises(RequestError) as refused:
        parse_decisions(body, LAYOUT, provided=state.provided)
    assert (refused.value.status, refused.value.field) == (422, f"context.{name}")
    assert "server" in refused.value.message


def test_the_drop_rule_is_refused_and_reloads_must_keep_the_history_block():
    with pytest.raises(ConfigError, match="serve.on_missing_feedback"):
        session_state_for(LAYOUT, "drop", ServeSessionsConfig())
    assert isinstance(session_state_for(LAYOUT, "zero_reward", ServeSessionsConfig()), HistorySessionState)
    plain = Layout.from_metadata({k: v for k, v in history_metadata().items() if k != "history"})
    assert type(session_state_for(plain, "drop", ServeSessionsConfig())) is SessionState
    state = HistorySessionState(LAYOUT.history, ServeSessionsConfig())
    state.check_layout(LAYOUT)
    other = Layout.from_metadata(history_metadata(HistorySpec(sums=("reward",), decays=(0.5,))))
    for refusing, layout in ((state, other), (state, plain), (SessionState(), LAYOUT)):
        with pytest.raises(ValueError, match="restart the server"):
            refusing.check_layout(layout)


def test_the_log_description_marks_history_features():
    description = LAYOUT.features_description()
    kinds = {f["id"]: f["kind"] for f in description["features"]}
    assert [kinds[i] for i in HISTORY_IDS] == ["history"] * len(HISTORY_IDS)
    assert kinds[1] == "context" and kinds[3] == "document"
    assert description["history"] == spec_to_dict(SPEC, HISTORY_IDS)
    assert all(f["slot"] is None for f in description["features"] if f["kind"] == "history")
