"""workflow.iterate: a tiny round tempts a bad promotion (a candidate learned from 100 episodes); none happens."""

from __future__ import annotations

import json

import pytest

from reagent_recsys.config import validate_config
from reagent_recsys.mdp_writer import read_mdp
from reagent_recsys.serving.loop import should_promote
from workflow.iterate import iterate

TINY = {
    "seed": 0,
    "env": {"type": "lts", "preset": "sweet_bitter"},
    "spark": {"master": "local[2]", "shuffle_partitions": 4, "driver_memory": "1g"},
    "training": {"epochs": 2, "batch_size": 256, "hidden_sizes": [32], "torch_threads": 1, "cpe_every_epoch": False},
    "training_table": {"num_files": 2},
    "evaluation": {"ground_truth_episodes": 300, "curve_episodes": 50, "bootstrap_samples": 20, "fqe_iterations": 3,
                   "fqe_epochs": 1, "fqe_hidden_sizes": [16], "reward_model_epochs": 2, "model_bootstrap_fits": 0,
                   "history_decays": [0.9]},
    "iterate": {"rounds": 1, "episodes_per_round": 100, "batch_size": 100},
}


def test_should_promote():
    assert should_promote(101.0, 100.0)
    assert not should_promote(100.0, 100.0) and not should_promote(None, 100.0)


@pytest.mark.slow
def test_tiny_round_promotes_no_worse_policy(tmp_path):
    config = validate_config({**TINY, "output_dir": str(tmp_path)})
    result = iterate(config)
    report = json.loads((tmp_path / "iterate" / "report.json").read_text())
    assert (tmp_path / "iterate" / "report.png").stat().st_size > 0
    (r,) = report["rounds"]
    # the round served the uniform random policy over HTTP: 100 episodes x 10 steps, propensity exactly 1/20
    log = read_mdp(tmp_path / "iterate" / "round_1" / "mdp")
    assert log.num_rows == 1000 and set(log.column("action_probability").to_pylist()) == {0.05}
    assert abs(r["served"]["true_return_with_exploration"]["mean"] - 99.8) < 15
    candidate, incumbent = r["candidate"], r["served"]
    assert r["promoted"] == (candidate["lower"] > incumbent["incumbent_estimate"])
    if r["promoted"]:  # a promotion must never ship a policy worse than the incumbent
        assert candidate["true_return"] >= incumbent["incumbent_true_return"]
    else:
        assert result["incumbent"]["policy"] == "uniform random (bootstrap)"
    # the tiny round's candidate is worse than random here: the rule had something to refuse
    assert candidate["true_return"] < incumbent["incumbent_true_return"] and not r["promoted"]
