"""timeline.history through the real timeline stage: the history features of every kept row (and of its next
state) equal the definition's row-by-row reference, and `_features.json` names them (real Spark, real Parquet)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preprocessing.timeline_job import run_timeline
from reagent_recsys.config import ConfigError, validate_config
from reagent_recsys.history import HistorySpec, assign_ids, numpy_history
from reagent_recsys.schema import FEATURES_FILE, MDP
from tests.test_history import DESCRIPTION, SPEC, logs, reference

HISTORY = {"sums": ["candidate.*", "reward", "metric.click", "state.*"], "decays": [0.5, 0.93, 1.0],
           "counts": ["metric.click", "step"], "since": ["metric.click", "action.2"]}  # SPEC, with wildcards


def write_mdp(root, df, description=DESCRIPTION):
    path = root / "mdp"
    path.mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(df, schema=MDP.arrow(), preserve_index=False), path / "part-0.parquet")
    if description is not None:
        (path / FEATURES_FILE).write_text(json.dumps(description))


def config(root, history=HISTORY, **timeline):
    return validate_config({"output_dir": str(root), "training": {"gamma": 0.9}, "timeline": {
        "eval_fraction": 0.3, "gamma": 0.9, "history": history, **timeline}})


def read_timeline(spark, root):
    return {(r.mdp_id, r.sequence_number): r for split in ("train", "eval")
            for r in spark.read.parquet(str(root / "timeline" / split)).collect()}


def test_history_features_equal_the_reference_through_the_timeline(spark, tmp_path):
    df = logs(seed=3, episodes=30)
    bad = df.index[df.mdp_id == "u7"].to_numpy()
    bad_seq = int(np.sort(df.loc[bad, "sequence_number"].to_numpy())[min(2, len(bad) - 1)])
    df.loc[(df.mdp_id == "u7") & (df.sequence_number == bad_seq), "action_probability"] = 0.0  # an invalid row
    write_mdp(tmp_path, df)
    run_timeline(spark, config(tmp_path, multi_steps=2, on_invalid="quarantine", quarantine="cut_episode"))

    kept = df[~((df.mdp_id == "u7") & (df.sequence_number >= bad_seq))].reset_index(drop=True)  # cut at the bad row
    expected = reference(kept)  # the definition over the kept steps of each episode
    ids = assign_ids(SPEC, [0, 100, 101, 102])
    by_key = {(r.mdp_id, r.sequence_number): expected[i] for i, r in enumerate(kept.itertuples())}
    order = {m: sorted(g.sequence_number) for m, g in kept.groupby("mdp_id")}
    rows = read_timeline(spark, tmp_path)
    assert len(order["u7"]) >= 2 and len(rows) == len(kept) - 2  # u7's last 2 kept steps: next states only
    checked_next = 0
    for (mdp_id, seq), row in rows.items():
        got = np.array([row.state_features[i] for i in ids], dtype=np.float32)
        np.testing.assert_array_equal(got, by_key[(mdp_id, seq)])
        position = order[mdp_id].index(seq)
        if row.not_terminal:  # the next state two kept steps later carries that step's history
            nxt = by_key[(mdp_id, order[mdp_id][position + 2])]
            np.testing.assert_array_equal(np.array([row.next_state_features[i] for i in ids], np.float32), nxt)
            checked_next += 1
        else:
            assert row.next_state_features == {}
        logged = dict(df[(df.mdp_id == mdp_id) & (df.sequence_number == seq)].state_features.iloc[0])
        assert {k: row.state_features[k] for k in logged} == logged  # the logged features are kept
    assert checked_next > 50

    written = json.loads((tmp_path / "timeline" / FEATURES_FILE).read_text())
    assert written["action"] == DESCRIPTION["action"]
    assert written["features"] == DESCRIPTION["features"] + [
        {"id": i, "name": n, "kind": "history", "slot": None} for i, n in zip(ids, SPEC.names, strict=True)]
    assert written["history"]["ids"] == ids and written["history"]["names"] == SPEC.names
    manifest = json.loads((tmp_path / "timeline" / "_manifest.json").read_text())
    assert manifest["history"] == written["history"]


def test_without_a_description_reward_step_and_action_sources_work(spark, tmp_path):
    df = logs(seed=4, episodes=12)
    write_mdp(tmp_path, df, description=None)
    history = {"sums": ["reward"], "decays": [0.7], "counts": ["step"], "since": ["action.*"]}
    run_timeline(spark, config(tmp_path, history=history))
    spec = HistorySpec(sums=("reward",), decays=(0.7,), counts=("step",), since=("action.0", "action.1", "action.2"))
    ids = assign_ids(spec, [102])  # above the largest feature id in the data
    assert ids[0] == 1000
    x = np.stack([df.reward.to_numpy(), np.ones(len(df)), *[(df.action == a).to_numpy(float) for a in "012"]], 1)
    expected = numpy_history(df.mdp_id.factorize()[0], df.sequence_number.to_numpy(), x, spec)
    rows = read_timeline(spark, tmp_path)
    for i, r in enumerate(df.itertuples()):
        got = rows[(r.mdp_id, r.sequence_number)].state_features
        np.testing.assert_array_equal(np.array([got[k] for k in ids], np.float32), expected[i])
    written = json.loads((tmp_path / "timeline" / FEATURES_FILE).read_text())
    assert [f["name"] for f in written["features"]] == spec.names


@pytest.mark.parametrize("history, field, words", [
    ({"sums": ["candidate.price"]}, "timeline.history.sums", "no candidate feature 'price'"),
    ({"sums": [], "since": ["state.user.age"]}, "timeline.history.since", "no feature named 'user.age'"),
    ({"sums": [], "counts": ["action.7"]}, "timeline.history.counts", "no action '7'"),
])
def test_a_source_the_logs_do_not_describe_is_a_config_error_naming_the_field(spark, tmp_path, history, field, words):
    write_mdp(tmp_path, logs(seed=5, episodes=3))
    with pytest.raises(ConfigError, match=f"{field}: .*{words}"):
        run_timeline(spark, config(tmp_path, history=history))
    assert not (tmp_path / "timeline").exists()
