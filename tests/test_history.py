"""History features: numpy, Spark and the server's running state equal a row-by-row reference, bit for bit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from reagent_recsys.history import (
    HistorySpec,
    HistorySpecError,
    SessionHistory,
    assign_ids,
    expand_sources,
    numpy_history,
    spark_history,
    spec_from_dict,
    spec_to_dict,
)
from reagent_recsys.schema import MDP

DESCRIPTION = {
    "features": [{"id": 0, "name": "user.mood", "kind": "user", "slot": None},
                 {"id": 100, "name": "doc[0].quality", "kind": "document", "slot": 0},
                 {"id": 101, "name": "doc[1].quality", "kind": "document", "slot": 1},
                 {"id": 102, "name": "doc[2].quality", "kind": "document", "slot": 2}],
    "action": {"values": ["0", "1", "2"]},
}
SPEC = HistorySpec(sums=("candidate.quality", "reward", "metric.click", "state.user.mood"), decays=(0.5, 0.93, 1.0),
                   counts=("metric.click", "step"), since=("metric.click", "action.2"))


def logs(seed: int = 0, episodes: int = 40) -> pd.DataFrame:
    """mdp rows of `episodes` episodes of 1-12 steps with gaps in sequence numbers, in shuffled order."""
    rng = np.random.default_rng(seed)
    rows = []
    for e in range(episodes):
        seq = np.cumsum(rng.integers(1, 4, rng.integers(1, 13)))  # gaps of 0-2 missing steps
        for s in seq:
            quality = rng.normal(size=3).astype(np.float32)
            state = {0: np.float32(rng.normal()), 100: quality[0], 101: quality[1], 102: quality[2]}
            if rng.random() < 0.2:
                del state[0]  # an absent feature counts as 0
            metrics = {"click": float(rng.random() < 0.3)} if rng.random() < 0.9 else {}
            rows.append(dict(ds="2026-01-01", mdp_id=f"u{e}", sequence_number=int(s),
                             state_features=list(state.items()), action=str(rng.integers(3)),
                             action_probability=1 / 3, reward=float(rng.normal() * 3), possible_actions=["0", "1", "2"],
                             metrics=list(metrics.items())))
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def step_values(df: pd.DataFrame) -> np.ndarray:
    """(N, sources) x of each row, computed row by row."""
    out = np.zeros((len(df), len(SPEC.sources)))
    for i, row in enumerate(df.itertuples()):
        state, metrics = dict(row.state_features), dict(row.metrics)
        x = {"candidate.quality": float(state[100 + int(row.action)]), "reward": row.reward,
             "metric.click": metrics.get("click", 0.0), "state.user.mood": float(state.get(0, 0.0)),
             "step": 1.0, "action.2": float(row.action == "2")}
        out[i] = [x[s] for s in SPEC.sources]
    return out


def reference(df: pd.DataFrame) -> np.ndarray:
    """The definition, one row at a time."""
    x = step_values(df)
    out = np.zeros((len(df), len(SPEC.features)), dtype=np.float32)
    col = {s: i for i, s in enumerate(SPEC.sources)}
    for _, rows in df.groupby("mdp_id"):
        ordered = rows.sort_values("sequence_number").index.to_numpy()
        for t, row in enumerate(ordered):
            past = x[ordered[:t]]
            values = []
            for f in SPEC.features:
                v = past[:, col[f.source]]
                if f.kind == "sum":
                    acc = 0.0
                    for value in v:  # oldest first
                        acc = acc * f.decay + value
                    values.append(acc)
                elif f.kind == "count":
                    values.append(float((v > 0).sum()))
                else:
                    events = np.flatnonzero(v > 0)
                    values.append(float(t - events[-1]) if len(events) else float(t + 1))
            out[row] = values
    return out


def test_numpy_equals_the_reference_on_shuffled_episodes_with_gaps():
    df = logs()
    got = numpy_history(pd.factorize(df.mdp_id)[0], df.sequence_number.to_numpy(), step_values(df), SPEC)
    np.testing.assert_array_equal(got, reference(df))


def test_spark_equals_the_reference(spark, tmp_path):
    df = logs(seed=1)
    ids = assign_ids(SPEC, [0, 100, 101, 102])
    assert ids[0] == 1000
    logged = df.copy()  # a decision log holds the values a server used: the table recomputes them
    logged["state_features"] = [f + [(1000, 99.0)] if i % 5 == 0 else f for i, f in enumerate(df.state_features)]
    table = pa.Table.from_pandas(logged, schema=MDP.arrow(), preserve_index=False)
    pq.write_table(table, tmp_path / "mdp.parquet")
    sdf = spark.read.parquet(str(tmp_path / "mdp.parquet")).repartition(3)
    out = spark_history(sdf, SPEC, DESCRIPTION, ids).select("mdp_id", "sequence_number", "state_features").toPandas()
    got = {(r.mdp_id, r.sequence_number): dict(r.state_features) for r in out.itertuples()}
    expected = reference(df)
    for i, row in enumerate(df.itertuples()):
        features = got[(row.mdp_id, row.sequence_number)]
        assert {k: features[k] for k in dict(row.state_features)} == dict(row.state_features)  # logged ones kept
        np.testing.assert_array_equal(np.array([features[k] for k in ids], dtype=np.float32), expected[i])


def test_the_server_state_equals_the_reference_with_late_feedback():
    df = logs(seed=2, episodes=15)
    x, expected = step_values(df), reference(df)
    col = {s: i for i, s in enumerate(SPEC.sources)}
    for _, rows in df.groupby("mdp_id"):
        session = SessionHistory(SPEC)
        for row in rows.sort_values("sequence_number").index:
            np.testing.assert_array_equal(session.next_features(), expected[row])
            known = {s: x[row, col[s]] for s in SPEC.sources if s not in ("reward", "metric.click")}
            position = session.add_step(known)  # the reward and the click arrive with the feedback
            session.update_step(position, {"reward": x[row, col["reward"]], "metric.click": x[row, col["metric.click"]]})
    # before the feedback the next step sees the reward as 0
    session = SessionHistory(HistorySpec(sums=("reward",), decays=(1.0,)))
    session.add_step({})
    assert session.next_features().tolist() == [0.0]
    session.update_step(0, {"reward": 2.5})
    assert session.next_features().tolist() == [2.5]


def test_wildcards_expand_from_the_description_and_bad_sources_are_named():
    assert expand_sources(["candidate.*", "state.*", "reward"], DESCRIPTION) == (
        "candidate.quality", "state.user.mood", "reward")
    assert expand_sources(["action.*"], DESCRIPTION, ["a", "b"]) == ("action.a", "action.b")
    with pytest.raises(HistorySpecError, match="'click'"):
        HistorySpec(sums=("click",), decays=(1.0,))
    with pytest.raises(HistorySpecError, match="candidate.*no such"):
        expand_sources(["candidate.*"], {"features": []})
    assert SPEC.names[:2] == ["history.sum[0.5].candidate.quality", "history.sum[0.93].candidate.quality"]
    assert SPEC.names[-1] == "history.since.action.2"
    assert spec_from_dict(spec_to_dict(SPEC, range(len(SPEC.features)))) == (SPEC, list(range(len(SPEC.features))))
