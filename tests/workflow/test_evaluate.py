"""workflow.evaluate on a tiny real pipeline: offline_gym -> Spark stages -> train -> export -> evaluate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from reagent_recsys.config import PipelineConfig, validate_config
from workflow.evaluate import (
    evaluate,
    fqe_transitions,
    load_served_policy,
    one_step_cpe,
    policy_probabilities,
    read_split,
    sequential_cpe,
)

ONE_STEP = ["DM", "IPS", "SNIPS", "DR", "Switch-DR"]
SEQUENTIAL = ["PDIS", "WPDIS", "FQE", "DR", "WDR", "MAGIC"]
BASELINES = ["logging", "random", "always_sweetest", "always_bitterest"]


def tiny_config(output_dir: Path) -> PipelineConfig:
    return validate_config({
        "output_dir": str(output_dir), "seed": 5,
        "env": {"type": "lts", "preset": "sweet_bitter"},
        "logging": {"num_episodes": 240, "batch_size": 240,
                    "policy": {"type": "epsilon_greedy", "epsilon": 0.5, "expert": {"direction": "min"}}},
        "timeline": {"eval_fraction": 0.5},
        "training": {"epochs": 2, "batch_size": 128, "hidden_sizes": [32, 16], "torch_threads": 1,
                     "shuffle_buffer": 1000},
        "evaluation": {"ground_truth_episodes": 600, "curve_episodes": 200, "bootstrap_samples": 60,
                       "fqe_iterations": 10, "reward_model_epochs": 5},
        "spark": {"master": "local[2]", "shuffle_partitions": 2, "driver_memory": "1g"},
    })


@pytest.fixture(scope="module")
def run(spark, tmp_path_factory):
    """Every real stage on a tiny config (the shared local[2] session serves the Spark stages)."""
    from workflow.export import export
    from workflow.identify_normalization import identify_normalization
    from workflow.offline_gym import offline_gym
    from workflow.timeline_operator import timeline_operator
    from workflow.train import train
    from workflow.training_table import training_table

    config = tiny_config(tmp_path_factory.mktemp("evaluate") / "run")
    for stage in (offline_gym, timeline_operator, identify_normalization, training_table, train, export):
        stage(config)
    summary = evaluate(config)
    report = json.loads((config.output_dir / "evaluation" / "report.json").read_text())
    return config, summary, report


@pytest.mark.slow
def test_report_has_every_estimate_and_the_truth(run):
    config, summary, report = run
    png = Path(summary["report_png"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert report["gamma"] == 1.0 and set(report["relative"]) == {"one_step", "sequential"}
    for section, names in (("one_step", ONE_STEP), ("sequential", SEQUENTIAL)):
        estimates = report[section]["estimates"]
        assert [e["name"] for e in estimates] == names
        truth = report[section]["truth"]
        for e in estimates:
            assert all(math.isfinite(e[k]) for k in ("value", "lower", "upper", "relative")), e
            assert e["lower"] <= e["value"] <= e["upper"], e
            assert e["truth"] == truth
            assert e["truth_in_interval"] == (e["lower"] <= truth <= e["upper"])
    truth = {t["name"]: t for t in report["ground_truth"]["policies"]}
    assert list(truth) == ["policy", *BASELINES]
    assert truth["always_sweetest"]["mean"] == pytest.approx(56.5, abs=0.5)
    assert report["sequential"]["truth"] == truth["policy"]["mean"] == summary["true_return"]["mean"]
    assert summary["WDR"] == report["sequential"]["estimates"][4]["value"]
    # The one-step truth is computable in sweet_bitter (satisfaction observed) and lies in the reward range.
    assert 0 < report["one_step"]["truth"] < 150
    assert [p["epoch"] for p in report["training_curve"]] == [1, 2]
    assert all(p["episodes"] == 200 for p in report["training_curve"])


@pytest.mark.slow
def test_logging_policy_as_target_recovers_the_logged_return(run):
    """Self-consistency: the logged propensities and the state columns agree, so PDIS(logging) = logged mean."""
    config, _, report = run
    check = report["logging_self_check"]
    assert check["available"]
    evaluation = read_split(config.output_dir / "training_table" / "eval")
    keys, index = np.unique(evaluation["mdp_key"], return_inverse=True)
    logged_mean = np.bincount(index, weights=evaluation["reward"]).mean()  # mean episode return
    for e in check["estimates"]:
        assert e["value"] == pytest.approx(logged_mean, rel=1e-6), e
    # The logs and the simulator agree on the logging policy's value (two independent samples).
    logging_truth = next(t for t in report["ground_truth"]["policies"] if t["name"] == "logging")
    returns = np.bincount(index, weights=evaluation["reward"])
    stderr = math.hypot(returns.std(ddof=1) / math.sqrt(len(keys)), logging_truth["stderr"])
    assert abs(logged_mean - logging_truth["mean"]) < 4 * stderr


@pytest.mark.slow
def test_target_probabilities_follow_the_served_mode(run):
    config, _, _ = run
    policy, metadata = load_served_policy(config.output_dir / "export")
    evaluation = read_split(config.output_dir / "training_table" / "eval")
    args = (evaluation["state"], evaluation["state_presence"], evaluation["possible_actions_mask"])
    greedy = policy_probabilities(policy, *args, greedy=True)
    soft = policy_probabilities(policy, *args, greedy=False)
    np.testing.assert_array_equal(greedy.sum(axis=1), 1.0)
    np.testing.assert_array_equal(greedy.argmax(axis=1), soft.argmax(axis=1))
    assert metadata["greedy"] is True and (soft.max(axis=1) < 1).any()


@pytest.mark.slow
def test_same_seed_same_report(run):
    config, _, report = run
    evaluate(config)
    again = json.loads((config.output_dir / "evaluation" / "report.json").read_text())
    assert {**again, "seconds": 0, "cpe_seconds": 0} == {**report, "seconds": 0, "cpe_seconds": 0}


@pytest.mark.slow
def test_fqe_transitions_equal_the_table_next_state_when_n_is_one(run):
    """With timeline.multi_steps = 1 the rebuilt 1-step transitions are exactly the table's own."""
    config, _, report = run
    assert config.timeline.multi_steps == 1
    train = read_split(config.output_dir / "training_table" / "train")
    target = np.random.default_rng(0).dirichlet(np.ones(train["possible_actions_mask"].shape[1]), len(train["action"]))
    rebuilt = fqe_transitions(train, target)
    live = train["not_terminal"].astype(bool)
    np.testing.assert_array_equal(rebuilt["not_terminal"], live)
    np.testing.assert_array_equal(rebuilt["next_state"][live], train["next_state"][live])
    np.testing.assert_array_equal(rebuilt["reward"], train["n_step_reward"])
    assert report["intervals"]["model_bootstrap_fits"] == 5
    for section, names in (("one_step", ["DM", "DR", "Switch-DR"]), ("sequential", ["FQE", "DR", "WDR", "MAGIC"])):
        for e in report[section]["estimates"]:
            assert (e["model_fits"] == 6) == (e["name"] in names), e  # main fit + 5 refits


def synthetic_config(tmp_path: Path, **evaluation) -> PipelineConfig:
    config = tiny_config(tmp_path)
    return config.model_copy(update={"evaluation": config.evaluation.model_copy(update=evaluation)})


def test_model_refits_make_the_dm_interval_cover_the_truth(tmp_path):
    """Small noisy train split, large eval split: the fixed-model DM interval is far too narrow; refits fix it."""

    def f(x: np.ndarray, a: np.ndarray) -> np.ndarray:  # E[r | x, a]
        return 1.0 + np.where(a == 0, x[:, 0], 0.0) + np.where(a == 2, 0.5 * x[:, 1], 0.0)

    settings = {"fqe_batch_size": 32, "fqe_learning_rate": 1e-2, "reward_model_epochs": 30,
                "fqe_hidden_sizes": [16], "bootstrap_samples": 100}
    fixed, refit = (synthetic_config(tmp_path, model_bootstrap_fits=k, **settings) for k in (0, 5))
    covered = {0: 0, 5: 0}
    for rep in range(10):
        rng = np.random.default_rng(rep)

        def split(n: int, rng: np.random.Generator = rng) -> dict[str, np.ndarray]:
            x, a = rng.uniform(-1, 1, (n, 2)).astype(np.float32), rng.integers(0, 3, n)
            return {"state": x, "action": a, "reward": f(x, a) + rng.normal(0, 2, n), "mdp_key": np.arange(n),
                    "action_probability": np.full(n, 1 / 3), "possible_actions_mask": np.ones((n, 3), bool)}

        train, evaluation = split(150), split(3000)
        target = np.eye(3)[np.full(3000, 2)]  # always action 2: DM, DR ~ the model's value
        truth = f(evaluation["state"], np.full(3000, 2)).mean()
        for k, config in ((0, fixed), (5, refit)):
            dm = one_step_cpe(config, train, evaluation, target)[0]
            assert dm.name == "DM" and dm.model_fits == (k + 1 if k else 0)
            covered[k] += dm.lower <= truth <= dm.upper
    assert covered[0] <= 2 and covered[5] >= 8, covered


def test_fqe_learns_from_one_step_transitions_when_the_table_is_n_step(tmp_path):
    """The train split's next_state is 5 steps ahead (multi_steps = 5): FQE must still value the target."""
    horizon, episodes = 5, 200
    rng = np.random.default_rng(0)
    n = horizon * episodes
    step = np.tile(np.arange(horizon), episodes)
    action = rng.integers(0, 2, n)
    order = rng.permutation(n)  # rows in any order
    train = {"mdp_key": np.repeat(np.arange(episodes), horizon)[order], "sequence_number": step[order],
             "state": step[order, None].astype(np.float32), "action": action[order],
             "reward": (action == 1).astype(np.float64)[order],
             "next_state": np.zeros((n, 1), np.float32), "not_terminal": np.zeros(n, bool)}  # the n-step view
    evaluation = {**{k: train[k] for k in ("mdp_key", "sequence_number", "state", "action", "reward")},
                  "action_probability": np.full(n, 0.5), "possible_actions_mask": np.ones((n, 2), bool)}
    target = np.tile([0.0, 1.0], (n, 1))  # always action 1 (reward 1 per step): true value = horizon
    config = synthetic_config(tmp_path, fqe_iterations=8, fqe_epochs=4, fqe_hidden_sizes=[16],
                              fqe_learning_rate=1e-2, fqe_batch_size=128, model_bootstrap_fits=2,
                              bootstrap_samples=40)
    estimates = {e.name: e for e in sequential_cpe(config, train, evaluation, target, target)}
    assert estimates["FQE"].value == pytest.approx(horizon, abs=0.3)
    assert estimates["FQE"].model_fits == 3  # main fit + 2 refits
    assert estimates["FQE"].lower <= estimates["FQE"].value <= estimates["FQE"].upper


def test_missing_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run workflow.export first"):
        evaluate(tiny_config(tmp_path / "empty"))
