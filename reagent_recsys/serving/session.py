"""Per-session state kept by the server between the decisions of one session: the hook for history features.

The server (one event loop, no locks: every hook runs on the loop's thread) calls `fill` before each forward
pass, `observe_decisions` after each decision and `observe_feedback` after each feedback (or timeout), `maintain`
periodically, `open` once with the sessions already in the decision log, and `check_layout` before it serves a
reloaded export. A subclass that adds features lists their names in `provided`: requests must not send them,
and they are not required from the client. The base class keeps nothing (serving/session_history.py keeps
history features).
"""

from __future__ import annotations

from collections.abc import Iterable

from reagent_recsys.serving.decision_log import Decision
from reagent_recsys.serving.policy import Layout
from reagent_recsys.serving.requests import ParsedDecisions


class SessionState:
    """No per-session state: every decision is served from its request alone."""

    provided: frozenset[str] = frozenset()
    sequential = False  # True: one session's decisions are never served in the same forward pass

    def open(self, logged_sessions: Iterable[str]) -> None:
        """Called once at startup with the session ids already in the decision log (earlier runs, the journal)."""

    def check_layout(self, layout: Layout) -> None:
        """Raise ValueError if this state cannot serve a policy with `layout` (a hot reload is then refused)."""
        if layout.history:
            raise ValueError("the new export has history features; restart the server to serve them")

    def fill(self, parsed: ParsedDecisions, layout: Layout) -> None:
        """Write the session-derived features of each decision into parsed.values / parsed.presence; raise
        requests.RequestError (4xx naming the field) to refuse the request."""

    def observe_decisions(self, decisions: list[Decision], layout: Layout) -> None:
        """Called with the decisions just served (in order), after they were journaled."""

    def observe_feedback(self, decisions: list[Decision]) -> None:
        """Called with the decisions whose reward just arrived (or timed out)."""

    def maintain(self) -> None:
        """Called periodically (every few tens of milliseconds) on the event loop: expire what is due."""

    def stats(self) -> dict[str, int]:
        """Gauges and counters for /metrics (name -> value)."""
        return {}
