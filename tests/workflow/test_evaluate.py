"""workflow.evaluate on a tiny real pipeline: offline_gym -> Spark stages -> train -> export -> evaluate."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from reagent_recsys.config import PipelineConfig, validate_config
from reagent_recsys.evaluation.inputs import fqe_transitions, read_split
from reagent_recsys.evaluation.targets import load_torchscript, policy_probabilities
from workflow.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[2]
ONE_STEP = ["DM", "IPS", "SNIPS", "DR", "Switch-DR"]
SEQUENTIAL = ["PDIS", "WPDIS", "FQE", "DR", "WDR", "MAGIC"]
BASELINES = ["logging", "random", "always_sweetest", "always_bitterest"]


def tiny_raw(output_dir: Path) -> dict:
    return {
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
    }


def tiny_config(output_dir: Path) -> PipelineConfig:
    return validate_config(tiny_raw(output_dir))


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
    policy = report["policies"][0]
    assert policy["name"] == "policy"
    for section, names in (("one_step", ONE_STEP), ("sequential", SEQUENTIAL)):
        estimates = policy[section]
        assert [e["name"] for e in estimates] == names
        truth = policy["truth"][section]
        for e in estimates:
            assert all(math.isfinite(e[k]) for k in ("value", "lower", "upper", "relative")), e
            assert e["lower"] <= e["value"] <= e["upper"], e
            assert e["truth"] == truth
            assert e["truth_in_interval"] == (e["lower"] <= truth <= e["upper"])
            assert policy["trust"][f"{section}/{e['name']}"]["level"] in ("ok", "caution", "untrusted")
    truth = {t["name"]: t for t in report["ground_truth"]["policies"]}
    assert list(truth) == ["policy", *BASELINES]
    assert truth["always_sweetest"]["mean"] == pytest.approx(56.5, abs=0.5)
    assert policy["truth"]["sequential"] == truth["policy"]["mean"] == summary["true_return"]["mean"]
    assert summary["WDR"] == policy["sequential"][4]["value"]
    # The one-step truth is computable in sweet_bitter (satisfaction observed) and lies in the reward range.
    assert 0 < policy["truth"]["one_step"] < 150
    assert [p["epoch"] for p in report["training_curve"]] == [1, 2]
    assert all(p["episodes"] == 200 for p in report["training_curve"])
    assert report["training_curve_source"] == "simulator"
    brief = summary["summary"]
    assert brief["truth"] == truth["policy"]["mean"] and brief["policy"]["DR"]["value"] == summary["sequential_DR"]
    assert brief["logging"] == report["logging"]["sequential"]["value"] and "truth" in brief["verdict"]
    assert [r["name"] for r in report["ranking"]["sequential/DR"]["order"]].count("logging") == 1


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
    policy, metadata = load_torchscript(config.output_dir / "export" / "policy.pt")
    evaluation = read_split(config.output_dir / "training_table" / "eval")
    args = (evaluation["state"], evaluation["state_presence"], evaluation["possible_actions_mask"])
    greedy = policy_probabilities(policy, *args, greedy=True)
    soft = policy_probabilities(policy, *args, greedy=False)
    np.testing.assert_array_equal(greedy.sum(axis=1), 1.0)
    np.testing.assert_array_equal(greedy.argmax(axis=1), soft.argmax(axis=1))
    assert metadata["greedy"] is True and (soft.max(axis=1) < 1).any()


@pytest.mark.slow
def test_sigkill_mid_evaluation_then_the_rerun_writes_the_same_report(run, tmp_path):
    """A real `cli.py run workflow.evaluate` killed while it fits its models leaves the report untouched; a rerun
    (same seed) writes the same report."""
    config, _, report = run
    out = config.output_dir
    before = {p.name: p.read_bytes() for p in (out / "evaluation").iterdir()}
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(tiny_raw(out)))
    proc = subprocess.Popen([sys.executable, str(ROOT / "workflow" / "cli.py"), "run", "workflow.evaluate",
                             str(config_path)], env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    for line in proc.stderr:  # past reading the table: fitting the reward model and FQE
        if line.startswith("evaluate: ") and "reading the training table" not in line:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "evaluate ended before it could be killed"
    assert {p.name: p.read_bytes() for p in (out / "evaluation").iterdir()} == before
    evaluate(config)
    again = json.loads((config.output_dir / "evaluation" / "report.json").read_text())
    assert {**again, "seconds": 0, "cpe_seconds": 0} == {**report, "seconds": 0, "cpe_seconds": 0}
    assert not [p.name for p in out.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


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
    assert report["model_inputs"]["intervals"]["model_bootstrap_fits"] == 5
    for section, names in (("one_step", ["DM", "DR", "Switch-DR"]), ("sequential", ["FQE", "DR", "WDR", "MAGIC"])):
        for e in report["policies"][0][section]:
            assert (e["model_fits"] == 6) == (e["name"] in names), e  # main fit + 5 refits


def test_missing_export_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run workflow.export first"):
        evaluate(tiny_config(tmp_path / "empty"))
