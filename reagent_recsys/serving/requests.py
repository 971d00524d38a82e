"""The JSON bodies of /v1/act and /v1/feedback, checked by hand so every error names the field it is about.

/v1/act takes one decision or ``{"decisions": [...]}``; a decision is::

    {"session_id": "u42", "step": 3,
     "context": {"user.satisfaction": 0.7, "time.progress": -0.2},             # features by metadata name
     "candidates": [{"id": "doc-1", "features": {"clickbait": 0.9}}, ...]}      # optional; candidate j = slot j

Without candidates, per-candidate features may be given in `context` by their full names (``doc[0].clickbait``)
and ``possible_actions`` (action names) may restrict the choice. /v1/feedback takes ``{"decision_id": ...,
"reward": 1.5, "metrics": {"click": 1}}`` or ``{"feedback": [...]}``. History features (exports with a history
block) are filled by the server from the session's earlier steps: a request that sends one is refused.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from reagent_recsys.serving.policy import Layout

MAX_DECISIONS = 10_000  # per request


class RequestError(ValueError):
    """A client mistake: HTTP `status` with a JSON body naming `field`."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.message, "field": self.field}


@dataclass
class ParsedDecisions:
    """B decisions as the policy's inputs plus what the log and the response need."""

    session_ids: list[str]
    steps: list[int]
    values: np.ndarray  # (B, F) float32 raw feature values (0 where absent)
    presence: np.ndarray  # (B, F) float32 1 where given
    mask: np.ndarray  # (B, A) bool possible actions
    candidate_ids: list[list[str | None] | None]  # per decision: the ids of its candidates, or None
    batched: bool  # the request used {"decisions": [...]}


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError("body", f"invalid JSON: {exc}", status=400) from None


def _number(value: Any, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError(field, f"expected a number, got {type(value).__name__} {_short(value)}")
    number = float(value)
    if not math.isfinite(number):
        raise RequestError(field, f"expected a finite number, got {value!r}")
    return number


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(field, f"expected an object, got {type(value).__name__} {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _unknown(keys: Any, allowed: Any, field: str, what: str) -> None:
    extra = sorted(set(keys) - set(allowed))
    if extra:
        raise RequestError(f"{field}.{extra[0]}" if field else extra[0],
                           f"unknown {what} (known: {', '.join(sorted(allowed))})")


def _items(body: Any, key: str) -> tuple[list[Any], bool, str]:
    """The list of items of a request (a single object or {key: [...]}) and the field prefix of item i."""
    body = _object(body, "body")
    if key in body:
        _unknown(body, {key}, "", "key")
        items = body[key]
        if not isinstance(items, list) or not items:
            raise RequestError(key, "expected a non-empty list")
        if len(items) > MAX_DECISIONS:
            raise RequestError(key, f"at most {MAX_DECISIONS} items per request, got {len(items)}", status=413)
        return items, True, key
    return [body], False, ""


def _at(prefix: str, i: int, batched: bool) -> str:
    return f"{prefix}[{i}]." if batched else ""


DECISION_KEYS = {"session_id", "step", "context", "candidates", "possible_actions"}


def parse_decisions(body: Any, layout: Layout, allow_missing: bool = False,
                    provided: frozenset[str] = frozenset()) -> ParsedDecisions:
    """Check a /v1/act body against `layout`; raise RequestError naming the first bad field.

    `provided`: features the server fills itself (session_state.SessionState.provided): refused from clients,
    never required.
    """
    items, batched, key = _items(body, "decisions")
    n, f, a = len(items), layout.num_features, layout.num_actions
    values = np.zeros((n, f), dtype=np.float32)
    presence = np.zeros((n, f), dtype=np.float32)
    mask = np.zeros((n, a), dtype=bool)
    session_ids: list[str] = []
    steps: list[int] = []
    candidate_ids: list[list[str | None] | None] = []
    for i, item in enumerate(items):
        at = _at(key, i, batched)
        item = _object(item, at.rstrip(".") or "body")
        _unknown(item, DECISION_KEYS, at.rstrip("."), "key")
        session = item.get("session_id")
        if not isinstance(session, str) or not session:
            raise RequestError(f"{at}session_id", "required: a non-empty string")
        step = item.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise RequestError(f"{at}step", f"required: an integer >= 0, got {_short(step)}")
        session_ids.append(session)
        steps.append(step)
        context = _object(item.get("context", {}), f"{at}context")
        candidates = item.get("candidates")
        allowed = layout.context_columns if candidates is not None else layout.name_columns
        for name, value in context.items():
            column = allowed.get(name)
            if name in provided:
                raise RequestError(f"{at}context.{name}", "set by the server from the session's history")
            if column is None:
                hint = " (per-candidate features go in candidates[j].features)" if name in layout.name_columns else ""
                raise RequestError(f"{at}context.{name}", f"unknown feature{hint}")
            values[i, column] = _number(value, f"{at}context.{name}")
            presence[i, column] = 1.0
        if candidates is not None:
            ids = _fast_candidates(candidates, layout, values[i], presence[i], mask[i])
            if ids is None:  # something is off: the careful path finds the field and raises
                ids = _parse_candidates(candidates, layout, values[i], presence[i], mask[i], at)
            candidate_ids.append(ids)
            if "possible_actions" in item:
                raise RequestError(f"{at}possible_actions", "give candidates or possible_actions, not both")
        else:
            candidate_ids.append(None)
            _parse_possible(item.get("possible_actions"), layout, mask[i], at)
        if not allow_missing:
            required = layout.context_columns if candidates is not None else layout.name_columns
            for name, column in required.items():
                if not presence[i, column] and name not in provided:
                    raise RequestError(f"{at}context.{name}", "missing feature (every feature is required; "
                                       "serve.allow_missing_features accepts absent ones)")
    return ParsedDecisions(session_ids, steps, values, presence, mask, candidate_ids, batched)


_CANDIDATE_KEYS = frozenset({"id", "features"})
_NUMBER_TYPES = frozenset({int, float})


def _fast_candidates(candidates: Any, layout: Layout, values: np.ndarray, presence: np.ndarray,
                     mask: np.ndarray) -> list[str | None] | None:
    """The common case in a few vectorized steps; None when anything is unusual (then _parse_candidates)."""
    if type(candidates) is not list or not 0 < len(candidates) <= layout.num_slots:
        return None
    k = len(candidates)
    try:
        features = [c["features"] for c in candidates]
        if not all(c.keys() <= _CANDIDATE_KEYS and len(f) == len(layout.candidate_columns)
                   for c, f in zip(candidates, features, strict=True)):
            return None
        for name, columns in layout.candidate_columns.items():
            column = [f[name] for f in features]
            if not set(map(type, column)) <= _NUMBER_TYPES:
                return None
            numbers = np.array(column, dtype=np.float64)
            if not np.isfinite(numbers).all():
                return None
            values[columns[:k]] = numbers
            presence[columns[:k]] = 1.0
        ids = [c.get("id") for c in candidates]
    except (KeyError, TypeError, AttributeError, OverflowError):
        return None
    if not set(map(type, ids)) <= {str, type(None)}:
        return None
    mask[layout.slot_actions[:k] if len(layout.slot_actions) else np.arange(k)] = True
    return ids


def _parse_candidates(candidates: Any, layout: Layout, values: np.ndarray, presence: np.ndarray,
                      mask: np.ndarray, at: str) -> list[str | None]:
    field = f"{at}candidates"
    if not isinstance(candidates, list) or not candidates:
        raise RequestError(field, "expected a non-empty list of candidates")
    if len(candidates) > layout.num_slots:
        raise RequestError(field, f"at most {layout.num_slots} candidates (the policy's slots), got {len(candidates)}")
    ids: list[str | None] = []
    for j, candidate in enumerate(candidates):
        cf = f"{field}[{j}]"
        candidate = _object(candidate, cf)
        _unknown(candidate, {"id", "features"}, cf, "key")
        cid = candidate.get("id")
        if cid is not None and not isinstance(cid, str | int):
            raise RequestError(f"{cf}.id", f"expected a string, got {_short(cid)}")
        ids.append(None if cid is None else str(cid))
        features = _object(candidate.get("features", {}), f"{cf}.features")
        for name, value in features.items():
            columns = layout.candidate_columns.get(name)
            if columns is None:
                known = ", ".join(sorted(layout.candidate_columns)) or "none: this policy has no per-candidate features"
                raise RequestError(f"{cf}.features.{name}", f"unknown candidate feature (known: {known})")
            values[columns[j]] = _number(value, f"{cf}.features.{name}")
            presence[columns[j]] = 1.0
        missing = [name for name, columns in layout.candidate_columns.items() if not presence[columns[j]]]
        if missing:
            raise RequestError(f"{cf}.features.{missing[0]}", "missing candidate feature")
        mask[layout.slot_actions[j] if len(layout.slot_actions) else j] = True
    return ids


def _parse_possible(possible: Any, layout: Layout, mask: np.ndarray, at: str) -> None:
    field = f"{at}possible_actions"
    if possible is None:
        mask[:] = True
        return
    if not isinstance(possible, list) or not possible:
        raise RequestError(field, "expected a non-empty list of action names")
    index = {name: k for k, name in enumerate(layout.action_names)}
    for j, name in enumerate(possible):
        if not isinstance(name, str) or name not in index:
            raise RequestError(f"{field}[{j}]", f"unknown action {_short(name)} (known: {', '.join(layout.action_names)})")
        mask[index[name]] = True


@dataclass
class Feedback:
    decision_id: str
    reward: float
    metrics: dict[str, float]
    field: str  # where it was in the request (for errors found later, e.g. an unknown id)


def parse_feedback(body: Any) -> tuple[list[Feedback], bool]:
    """Check a /v1/feedback body; raise RequestError naming the first bad field."""
    items, batched, key = _items(body, "feedback")
    out = []
    for i, item in enumerate(items):
        at = _at(key, i, batched)
        item = _object(item, at.rstrip(".") or "body")
        _unknown(item, {"decision_id", "reward", "metrics"}, at.rstrip("."), "key")
        decision_id = item.get("decision_id")
        if not isinstance(decision_id, str) or not decision_id:
            raise RequestError(f"{at}decision_id", "required: a non-empty string")
        if "reward" not in item:
            raise RequestError(f"{at}reward", "required: a number")
        reward = _number(item["reward"], f"{at}reward")
        metrics = _object(item.get("metrics", {}), f"{at}metrics")
        parsed = {}
        for name, value in metrics.items():
            if name == "feedback_missing":
                raise RequestError(f"{at}metrics.{name}", "reserved metric name (the server sets it)")
            parsed[name] = _number(value, f"{at}metrics.{name}")
        out.append(Feedback(decision_id, reward, parsed, f"{at}decision_id"))
    return out, batched
