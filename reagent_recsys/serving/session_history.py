"""History features in the server: each session's running `history.SessionHistory`, so a served decision sees
the same history features as the timeline's row for the same step (reagent_recsys/history.py defines them).

A session is the requests' ``session_id``: one episode, logged under mdp_id = session_id with sequence_number =
``step``. The server folds its own decisions and their feedback, step after step:

- before the forward pass, the decision's history features are the session's `next_features()` (clients never
  send them: 422 naming the field);
- after it, the step's decision-time values are read from the decision exactly as the log row holds it
  (state.<name>, candidate.<name> of the chosen candidate, action.<value>, step), so the table's
  `spark_step_values` of that row gives the same numbers;
- the feedback fills reward and metric.<name> (a timed-out decision: reward 0 and metric feedback_missing = 1,
  like its log row under on_missing_feedback: zero_reward).

Steps must come in increasing order per session (gaps are fine: history counts positions) and one at a time:
step t + 1's history needs step t's chosen candidate, so a request may carry one decision per session and two
requests of one session are never batched into one forward pass. A decision served before the previous step's
feedback arrived sees that reward (and metrics) as 0, while the table, recomputed later, sees the real reward:
parity needs each step's feedback before the next step (counted in /metrics as
reagent_history_served_before_feedback_total).

Memory is bounded: a session ends after `serve.sessions.idle_seconds` without a decision, or when it is the least
recently used one past `serve.sessions.max_sessions`. Its state is freed; a later decision for it is refused
(409 naming session_id: the history it would need is gone, and a fresh start would disagree with the table, which
groups the whole mdp_id). Sessions already in the decision log when the server starts (a restart) are refused
the same way: the state lives in this process's memory only.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from reagent_recsys.config import ServeSessionsConfig
from reagent_recsys.history import SessionHistory, candidate_feature_ids, spec_from_dict, state_feature_id
from reagent_recsys.serving.decision_log import CLOSED_IDS_KEPT, Decision, RecentIds
from reagent_recsys.serving.policy import Layout
from reagent_recsys.serving.requests import ParsedDecisions, RequestError
from reagent_recsys.serving.session import SessionState

ENDED_KEPT = CLOSED_IDS_KEPT  # ended session ids remembered (refused); older ones would start afresh


@dataclass
class _Session:
    history: SessionHistory
    last_step: int
    last_seen: float
    awaiting: dict[str, int] = field(default_factory=dict)  # decision id -> its step position, feedback pending


class _StepPlan:
    """Where a decision's decision-time source values are, by feature id (the log row's state_features keys)."""

    def __init__(self, sources: tuple[str, ...], layout: Layout) -> None:
        description = layout.features_description()
        self.layout = layout  # keeps id(layout) from being reused while the plan is cached
        self.columns = np.array([int(np.flatnonzero(layout.feature_ids == i)[0]) if (layout.feature_ids == i).any()
                                 else -1 for i in layout.history["ids"]], dtype=np.int64)
        if (self.columns < 0).any():
            raise ValueError("the export's history block names feature ids its feature_ids lack")
        self.state: dict[str, int] = {}  # source -> feature id
        self.candidate: dict[str, dict[str, int]] = {}  # source -> {action: feature id}
        self.action: dict[str, str] = {}  # source -> action value
        self._indexes: dict[int, tuple[list[int], dict[int, int]]] = {}
        for source in sources:
            kind, _, name = source.partition(".")
            if kind == "state":
                self.state[source] = state_feature_id(description, name)
            elif kind == "candidate":
                self.candidate[source] = candidate_feature_ids(description, name)
            elif kind == "action":
                self.action[source] = name

    def _index(self, feature_ids: list[int]) -> dict[int, int]:
        """{feature id: position in `feature_ids`}, cached per list: the policy shares one list per pattern."""
        cached = self._indexes.get(id(feature_ids))
        if cached is None or cached[0] is not feature_ids:
            if len(self._indexes) >= 256:
                self._indexes.clear()
            cached = self._indexes[id(feature_ids)] = (feature_ids, {f: k for k, f in enumerate(feature_ids)})
        return cached[1]

    def step_values(self, d: Decision) -> dict[str, float]:
        """The decision-time sources of `d` (absent features count 0, as in spark_step_values)."""
        index = self._index(d.feature_ids)

        def value(fid: int | None) -> float:
            k = index.get(fid) if fid is not None else None
            return 0.0 if k is None else float(d.values[k])

        out = {"step": 1.0}
        out.update({s: value(fid) for s, fid in self.state.items()})
        out.update({s: value(ids.get(d.action)) for s, ids in self.candidate.items()})
        out.update({s: float(d.action == a) for s, a in self.action.items()})
        return out


class HistorySessionState(SessionState):
    """Per-session history features (see the module docstring). Runs on the server's event loop: no locks."""

    sequential = True

    def __init__(self, block: Mapping, config: ServeSessionsConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.block = dict(block)
        self.spec, self.ids = spec_from_dict(block)
        self.provided = frozenset(self.spec.names)
        self.feedback_sources = tuple(s for s in self.spec.sources if s == "reward" or s.startswith("metric."))
        self.config, self.clock = config, clock
        self.sessions: OrderedDict[str, _Session] = OrderedDict()  # least recently used first
        self.ended = RecentIds(ENDED_KEPT)
        self.before_start: frozenset[str] = frozenset()
        self.initial = SessionHistory(self.spec).next_features()  # (H,) a new session's features
        self._plans: dict[int, _StepPlan] = {}
        self.counts = {"sessions_ended_idle": 0, "sessions_ended_lru": 0, "served_before_feedback": 0,
                       "refused_ended": 0}

    def open(self, logged_sessions: Iterable[str]) -> None:
        self.before_start = frozenset(logged_sessions)

    def check_layout(self, layout: Layout) -> None:
        if layout.history != self.block:
            raise ValueError("the new export's history features differ from the ones this server keeps per "
                             "session; restart the server to serve it")

    def _plan(self, layout: Layout) -> _StepPlan:
        plan = self._plans.get(id(layout))
        if plan is None or plan.layout is not layout:
            self.check_layout(layout)
            if len(self._plans) >= 4:  # old policy versions
                self._plans.clear()
            plan = self._plans[id(layout)] = _StepPlan(self.spec.sources, layout)
        return plan

    # ------------------------------------------------------------------------------------------ decide
    def fill(self, parsed: ParsedDecisions, layout: Layout) -> None:
        columns = self._plan(layout).columns
        now = self.clock()
        seen: set[str] = set()
        for i, (session_id, step) in enumerate(zip(parsed.session_ids, parsed.steps, strict=True)):
            at = f"decisions[{i}]." if parsed.batched else ""
            if session_id in seen:
                raise RequestError(f"{at}session_id", f"session {session_id!r} twice in one request: its history "
                                   "features need one step at a time (the next step's history needs this one's "
                                   "chosen candidate)")
            seen.add(session_id)
            session = self.sessions.get(session_id)
            if session is not None and now - session.last_seen > self.config.idle_seconds:
                self._end(session_id, "sessions_ended_idle")
                session = None
            if session is None:
                if session_id in self.ended or session_id in self.before_start:
                    self.counts["refused_ended"] += 1
                    why = "ended (idle or least recently used)" if session_id in self.ended else \
                        "has decisions from before this server started"
                    raise RequestError(f"{at}session_id", f"session {session_id!r} {why}: the server no longer has "
                                       "its history; start a new session_id", status=409)
                features = self.initial
            else:
                if step <= session.last_step:
                    raise RequestError(f"{at}step", f"session {session_id!r} step {step}: steps must increase "
                                       f"within a session (last served: {session.last_step})", status=409)
                features = session.history.next_features()
                if session.awaiting:
                    self.counts["served_before_feedback"] += 1
            parsed.values[i, columns] = features
            parsed.presence[i, columns] = 1.0

    def observe_decisions(self, decisions: list[Decision], layout: Layout) -> None:
        plan = self._plan(layout)
        now = self.clock()
        for d in decisions:
            session = self.sessions.get(d.mdp_id)
            if session is None:
                session = self.sessions[d.mdp_id] = _Session(SessionHistory(self.spec), d.sequence_number, now)
                while len(self.sessions) > self.config.max_sessions:
                    self._end(next(iter(self.sessions)), "sessions_ended_lru")
            else:
                self.sessions.move_to_end(d.mdp_id)
                session.last_step, session.last_seen = d.sequence_number, now
            position = session.history.add_step(plan.step_values(d))
            if self.feedback_sources:
                session.awaiting[d.decision_id] = position

    def observe_feedback(self, decisions: list[Decision]) -> None:
        for d in decisions:
            session = self.sessions.get(d.mdp_id)
            position = session.awaiting.pop(d.decision_id, None) if session is not None else None
            if position is None:  # an ended session, or one from before a restart: nothing to update
                continue
            metrics = d.metrics or {}
            session.history.update_step(position, {
                s: float(d.reward or 0.0) if s == "reward" else float(metrics.get(s[len("metric."):], 0.0))
                for s in self.feedback_sources})

    # --------------------------------------------------------------------------------------- expiry
    def _end(self, session_id: str, reason: str) -> None:
        del self.sessions[session_id]
        self.ended.add(session_id)
        self.counts[reason] += 1

    def maintain(self) -> None:
        cutoff = self.clock() - self.config.idle_seconds
        while self.sessions:
            session_id, session = next(iter(self.sessions.items()))
            if session.last_seen >= cutoff:
                break
            self._end(session_id, "sessions_ended_idle")

    def stats(self) -> dict[str, int]:
        return {"sessions": len(self.sessions), **self.counts}


def session_state_for(layout: Layout, on_missing_feedback: str, sessions: ServeSessionsConfig) -> SessionState:
    """The session state a policy with `layout` needs: history features when its export has a history block."""
    if not layout.history:
        return SessionState()
    if on_missing_feedback == "drop":
        from reagent_recsys.config import ConfigError

        raise ConfigError("serve.on_missing_feedback: 'drop' with an export that has history features: a dropped "
                          "row would shift the later steps' history positions in the retrained table, so served "
                          "and recomputed features would differ; use zero_reward")
    return HistorySessionState(layout.history, sessions)
