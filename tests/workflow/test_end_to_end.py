"""workflow.end_to_end: skip what is up to date, rerun what a changed input or config reaches.

(One run per output_dir, the lock: tests/workflow/test_reliability.py, with two real runs started together.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TEST_SPARK

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(ROOT / "workflow" / "cli.py")]
TINY = {
    "seed": 5,
    "env": {"type": "lts", "preset": "sweet_bitter"},
    "logging": {"num_episodes": 120, "batch_size": 120},
    "timeline": {"eval_fraction": 0.5},
    "training": {"epochs": 1, "batch_size": 128, "hidden_sizes": [16], "torch_threads": 1, "shuffle_buffer": 500},
    "evaluation": {"ground_truth_episodes": 100, "curve_episodes": 50, "bootstrap_samples": 20,
                   "fqe_iterations": 3, "fqe_epochs": 1, "reward_model_epochs": 2, "model_bootstrap_fits": 0},
    "spark": {**TEST_SPARK, "shuffle_partitions": 2},
}


def write_config(path: Path, **sections) -> Path:
    path.write_text(yaml.safe_dump({**TINY, **sections}))
    return path


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "run", *args], capture_output=True, text=True, cwd=ROOT, timeout=900)


def statuses(done: subprocess.CompletedProcess) -> dict[str, tuple[str, str]]:
    assert done.returncode == 0, done.stderr[-3000:]
    stages = json.loads(done.stdout)["result"]["stages"]
    return {s["workflow"].removeprefix("workflow."): (s["status"], s["reason"]) for s in stages}


@pytest.mark.slow
def test_changed_input_reruns_from_the_stage_that_reads_it(tmp_path):
    logs = tmp_path / "logs"
    assert run("offline_gym", str(write_config(tmp_path / "logs.yaml", output_dir=str(logs)))).returncode == 0
    timeline = {**TINY["timeline"], "input_path": str(logs / "mdp")}
    config = write_config(tmp_path / "run.yaml", output_dir=str(tmp_path / "out"), timeline=timeline)

    first = statuses(run("end_to_end", str(config), "--json"))
    assert all(status == "ran" for status, _ in first.values()), first

    # a resume flag shapes nothing: everything is up to date
    again = statuses(run("end_to_end", str(config), "--json", "--set", "training.resume=true"))
    assert all(status == "skipped" for status, _ in again.values()), again

    # replace the external input: the timeline and everything after it run again, saying why
    assert run("offline_gym", str(write_config(tmp_path / "logs.yaml", output_dir=str(logs), seed=6))).returncode == 0
    changed = statuses(run("end_to_end", str(config), "--json"))
    assert changed["offline_gym"][0] == "skipped"
    assert changed["timeline_operator"] == ("ran", f"input changed: {logs / 'mdp'}")
    assert all(changed[s][0] == "ran" for s in ("identify_normalization", "training_table", "train", "evaluate"))

    # a config change names the field; the human summary is a table in pipeline order saying why each ran
    done = run("end_to_end", str(config), "--set", "training.epochs=2")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split()[1]: line for line in done.stdout.splitlines() if line[:1].isdigit()}
    assert list(rows) == ["offline_gym", "timeline_operator", "identify_normalization", "training_table", "train",
                          "export", "evaluate"]
    assert "skipped: up to date" in rows["training_table"]
    assert "ran: config changed: training.epochs 1 -> 2" in rows["train"]


def test_exported_logging_policies_are_inputs_of_offline_gym(tmp_path):
    """A retrained expert (its policy.pt changed) must regenerate the logs it serves, also inside a mixture."""
    from reagent_recsys.config import validate_config
    from workflow.end_to_end import STAGES

    expert = {"type": "exported", "path": str(tmp_path / "expert" / "export"), "exploration": "epsilon_greedy"}
    config = validate_config({**TINY, "output_dir": str(tmp_path / "out"), "logging": {"policy": {
        "type": "mixture", "components": [{"weight": 0.2, "policy": expert},
                                          {"weight": 0.8, "policy": {"type": "random"}}]}}})
    gym = next(s for s in STAGES if s.workflow == "workflow.offline_gym")
    assert gym.external_inputs(config) == [str(tmp_path / "expert" / "export")]
    assert gym.external_inputs(validate_config({**TINY, "output_dir": str(tmp_path / "out")})) == []
