"""Per-session state kept by the server between the decisions of one session: the hook for history features.

The server calls `fill` before each forward pass and the `observe_*` methods after each decision and feedback.
A subclass that adds features (e.g. decayed sums of the session's past context and chosen-candidate features)
lists their names in `provided`: requests must not send them, and they are not required from the client.
The base class keeps nothing.
"""

from __future__ import annotations

from reagent_recsys.serving.decision_log import Decision
from reagent_recsys.serving.policy import Layout
from reagent_recsys.serving.requests import ParsedDecisions


class SessionState:
    """No per-session state: every decision is served from its request alone."""

    provided: frozenset[str] = frozenset()

    def fill(self, parsed: ParsedDecisions, layout: Layout) -> None:
        """Write the session-derived features of each decision into parsed.values / parsed.presence."""

    def observe_decisions(self, decisions: list[Decision]) -> None:
        """Called with the decisions just served (in order), after they were journaled."""

    def observe_feedback(self, decisions: list[Decision]) -> None:
        """Called with the decisions whose reward just arrived (or timed out)."""
