"""Request parsing: features by name land in the policy's columns; every mistake names its field."""

from __future__ import annotations

import numpy as np
import pytest

from reagent_recsys.serving.policy import Layout
from reagent_recsys.serving.requests import RequestError, parse_decisions, parse_feedback, parse_json
from tests.serving.helpers import NAMES, decision

LAYOUT = Layout.from_metadata({"feature_ids": list(NAMES), "feature_names": list(NAMES.values()),
                               "action_names": ["0", "1", "2", "3"]})


def test_layout_finds_candidate_slots():
    assert LAYOUT.context_columns == {"user.satisfaction": 0, "time.progress": 1}
    assert LAYOUT.candidate_columns["clickbait"].tolist() == [2, 3, 4, 5]
    assert LAYOUT.slot_actions.tolist() == [0, 1, 2, 3]
    description = LAYOUT.features_description()
    assert [f["kind"] for f in description["features"]] == ["context"] * 2 + ["document"] * 4
    assert [f["id"] for f in description["features"]] == list(NAMES)


def test_candidates_fill_their_slots_and_the_mask():
    parsed = parse_decisions({"decisions": [decision("s", 0, [0.9, 0.1, 0.7]), decision("s", 1)]}, LAYOUT)
    np.testing.assert_allclose(parsed.values[0], [0.5, -0.5, 0.9, 0.1, 0.7, 0.0])
    assert parsed.presence[0].tolist() == [1, 1, 1, 1, 1, 0]
    assert parsed.mask.tolist() == [[True, True, True, False], [True] * 4]
    assert parsed.candidate_ids[0] == ["doc-0", "doc-1", "doc-2"] and parsed.batched


def test_full_names_without_candidates_and_possible_actions():
    context = {name: float(i) for i, name in enumerate(NAMES.values())}
    parsed = parse_decisions({"session_id": "s", "step": 0, "context": context, "possible_actions": ["3", "1"]},
                             LAYOUT)
    np.testing.assert_allclose(parsed.values[0], np.arange(6))
    assert parsed.mask.tolist() == [[False, True, False, True]] and not parsed.batched


def _error(body, layout=LAYOUT, **kwargs) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_decisions(body, layout, **kwargs)
    return info.value


@pytest.mark.parametrize(("mutate", "field", "message"), [
    (lambda d: d.pop("session_id"), "session_id", "required"),
    (lambda d: d.update(step=-1), "step", "integer >= 0"),
    (lambda d: d.update(step="3"), "step", "integer >= 0"),
    (lambda d: d["context"].update(age=3), "context.age", "unknown feature"),
    (lambda d: d["context"].update({"doc[0].clickbait": 1}), "context.doc[0].clickbait", "candidates[j].features"),
    (lambda d: d["context"].pop("time.progress"), "context.time.progress", "missing feature"),
    (lambda d: d["context"].update({"time.progress": "high"}), "context.time.progress", "expected a number"),
    (lambda d: d["context"].update({"time.progress": True}), "context.time.progress", "expected a number"),
    (lambda d: d["context"].update({"time.progress": float("nan")}), "context.time.progress", "finite"),
    (lambda d: d.update(candidates=[]), "candidates", "non-empty"),
    (lambda d: d.update(candidates=[{"features": {"clickbait": 0}}] * 5), "candidates", "at most 4"),
    (lambda d: d["candidates"][1]["features"].pop("clickbait"), "candidates[1].features.clickbait", "missing"),
    (lambda d: d["candidates"][2]["features"].update(price=1), "candidates[2].features.price", "unknown"),
    (lambda d: d.update(extra=1), "extra", "unknown key"),
    (lambda d: d.update(possible_actions=["0"]), "possible_actions", "not both"),
])
def test_bad_decisions_name_the_field(mutate, field, message):
    body = decision("s", 0)
    mutate(body)
    error = _error(body)
    assert error.field == field and message in error.message and error.status == 422
    batched = _error({"decisions": [decision("s", 0), body]})
    assert batched.field == f"decisions[1].{field}"


def test_body_errors():
    with pytest.raises(RequestError) as info:
        parse_json(b"{not json")
    assert info.value.status == 400 and info.value.field == "body"
    assert _error([1, 2]).field == "body"
    assert _error({"decisions": []}).field == "decisions"
    assert _error({"session_id": "s", "step": 0, "possible_actions": ["9"]}, allow_missing=True).field == \
        "possible_actions[0]"


def test_missing_features_allowed_when_configured():
    body = decision("s", 0)
    body["context"].pop("time.progress")
    parsed = parse_decisions(body, LAYOUT, allow_missing=True)
    assert parsed.presence[0, 1] == 0


def test_feedback():
    items, batched = parse_feedback({"feedback": [{"decision_id": "a", "reward": 1, "metrics": {"click": 1}}]})
    assert (items[0].decision_id, items[0].reward, items[0].metrics, batched) == ("a", 1.0, {"click": 1.0}, True)
    for body, field in [({"reward": 1}, "decision_id"), ({"decision_id": "a"}, "reward"),
                        ({"decision_id": "a", "reward": "x"}, "reward"),
                        ({"decision_id": "a", "reward": 1, "metrics": {"c": [1]}}, "metrics.c"),
                        ({"decision_id": "a", "reward": 1, "metrics": {"feedback_missing": 1}},
                         "metrics.feedback_missing")]:
        with pytest.raises(RequestError) as info:
            parse_feedback(body)
        assert info.value.field == field
