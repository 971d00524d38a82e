"""workflow.offline_gym end to end on tiny configs: the real simulator, real Parquet, the real CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from reagent_recsys.config import validate_config
from reagent_recsys.mdp_writer import read_mdp
from reagent_recsys.schema import FEATURES_FILE, MANIFEST_FILE, MDP
from workflow import offline_gym as stage

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def config(tmp_path: Path, name: str = "out", seed: int = 0, **logging) -> object:
    logging = {"num_episodes": 30, "batch_size": 8, **logging}
    return validate_config({"output_dir": str(tmp_path / name), "seed": seed, "env": {}, "logging": logging})


def rows_by_episode(table) -> dict:
    return table.sort_by([("mdp_id", "ascending"), ("sequence_number", "ascending")]).to_pydict()


def test_table_schema_ids_and_state_before_action(tmp_path):
    cfg = config(tmp_path, policy={"type": "epsilon_greedy", "epsilon": 0.25})
    summary = stage.offline_gym(cfg)
    table_dir = tmp_path / "out" / "mdp"
    assert sorted(p.name for p in table_dir.iterdir()) == [FEATURES_FILE, MANIFEST_FILE, "ds=2026-01-01"]
    assert len(list((table_dir / "ds=2026-01-01").glob("part-*.parquet"))) == 4  # ceil(30 / 8) batches
    table = read_mdp(table_dir)
    MDP.check_arrow(table.schema, allow_extra=False)
    time_budget, n = 10, 20  # the sweet_bitter preset
    assert table.num_rows == summary["rows"] == 30 * time_budget
    rows = rows_by_episode(table)
    ids = np.array(rows["mdp_id"]).reshape(30, time_budget)
    assert len(set(ids[:, 0])) == 30 and (ids == ids[:, :1]).all()
    np.testing.assert_array_equal(np.array(rows["sequence_number"]).reshape(30, -1), np.tile(np.arange(10), (30, 1)))
    assert set(rows["ds"]) == {"2026-01-01"}
    assert rows["possible_actions"][0] == [str(i) for i in range(n)]

    states = [dict(s) for s in rows["state_features"]]
    metrics = [dict(m) for m in rows["metrics"]]
    actions = np.array(rows["action"], dtype=np.int64)
    clickbait = np.array([[s[100 + j] for j in range(n)] for s in states])  # (R, N) candidates before acting
    sat = np.array([s[0] for s in states])
    progress = np.array([s[3] for s in states])
    # The state is the one BEFORE the action: it holds the time of the step and the satisfaction the user
    # responded with, and (deterministic sweet_bitter dynamics) the reward follows from it.
    np.testing.assert_allclose(progress, np.tile(np.arange(10) / 10 - 0.5, 30), atol=1e-6)
    np.testing.assert_allclose(sat, [m["satisfaction"] for m in metrics], rtol=1e-6)
    chosen = clickbait[np.arange(len(actions)), actions]
    np.testing.assert_allclose(rows["reward"], np.exp(5.0 * chosen * sat), rtol=1e-5)
    np.testing.assert_allclose(rows["reward"], [m["engagement"] for m in metrics])
    # Exact epsilon-greedy propensities.
    expert = clickbait.argmax(axis=1)
    expected = np.where(actions == expert, 0.25 / n + 0.75, 0.25 / n)
    np.testing.assert_allclose(rows["action_probability"], expected)

    features = json.loads((table_dir / FEATURES_FILE).read_text())
    assert sorted(f["id"] for f in features["features"]) == sorted(states[0])
    manifest = json.loads((table_dir / MANIFEST_FILE).read_text())
    assert manifest["rows"] == 300 and manifest["episodes"] == 30 and manifest["seed"] == 0
    assert manifest["config_hash"] == cfg.section_hash("env", "logging")
    assert manifest["config"]["logging"]["policy"]["epsilon"] == 0.25
    assert "pyarrow" in manifest["package_versions"]


def test_same_seed_same_table_other_seed_differs(tmp_path):
    tables = [read_mdp(stage.offline_gym(config(tmp_path, name, seed))["path"])
              for name, seed in (("a", 4), ("b", 4), ("c", 5))]
    assert tables[0].equals(tables[1])
    a, c = rows_by_episode(tables[0]), rows_by_episode(tables[2])
    assert a["mdp_id"] == c["mdp_id"] and a["reward"] != c["reward"]


def test_mixture_logs_component_and_exact_episode_probability(tmp_path):
    policy = {"type": "mixture", "components": [
        {"weight": 0.3, "policy": {"type": "greedy"}}, {"weight": 0.7, "policy": {"type": "random"}}]}
    table = read_mdp(stage.offline_gym(config(tmp_path, num_episodes=200, batch_size=64, policy=policy))["path"])
    rows = rows_by_episode(table)
    comp = np.array([dict(m)["policy_component"] for m in rows["metrics"]]).reshape(200, 10)
    assert (comp == comp[:, :1]).all() and set(np.unique(comp)) == {0.0, 1.0}
    actions = np.array(rows["action"], dtype=np.int64).reshape(200, 10)
    greedy = np.array([max(range(20), key=lambda j, s=dict(s): s[100 + j]) for s in rows["state_features"]])
    all_greedy = (actions == greedy.reshape(200, 10)).all(axis=1)
    truth = 0.3 * all_greedy + 0.7 * (1 / 20) ** 10  # true probability of each episode's action sequence
    episode_prob = np.prod(np.array(rows["action_probability"]).reshape(200, 10), axis=1)
    np.testing.assert_allclose(episode_prob, truth, rtol=1e-9)
    assert (all_greedy == (comp[:, 0] == 0)).all()  # random episodes never pick the greedy item 10 times


def test_failure_mid_write_leaves_earlier_table_intact(tmp_path, monkeypatch):
    stage.offline_gym(config(tmp_path, num_episodes=8))
    table_dir = tmp_path / "out" / "mdp"
    before = read_mdp(table_dir)
    real_write, calls = stage.write_part, []

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(stage, "write_part", failing_write)
    with pytest.raises(OSError, match="disk full"):
        stage.offline_gym(config(tmp_path, num_episodes=40, seed=1))
    assert len(calls) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["mdp"]  # no temporary left behind
    assert read_mdp(table_dir).equals(before)


def run_cli(config_path: Path, *overrides: str, wait: bool = True):
    args = [PYTHON, str(ROOT / "workflow" / "cli.py"), "run", "workflow.offline_gym", str(config_path)]
    for item in overrides:
        args += ["--set", item]
    if not wait:
        return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("yaml_text, message", [
    ("env:\n  time_budget: 0\n", r"env\.time_budget: Input should be greater than 0 \(got 0\)"),
    ("env:\n  slate_size: 25\n", r"env\.slate_size: must be <= num_candidates \(20\) \(got 25\)"),
    ("env:\n  preset: bitter\n", r"env\.preset: Input should be 'recsim', 'strong' or 'sweet_bitter'"),
    ("env: {}\nlogging:\n  policy:\n    type: mixture\n    components:\n      - {weight: 0.5, policy: {type: random}}\n"
     "      - {weight: 0.2, policy: {type: greedy}}\n", r"logging\.policy: component weights must sum to 1, got 0\.7"),
    ("env: {}\nlogging:\n  policy: {type: epsilon_greedy, expert: {feature: quality}}\n",
     r"logging\.policy\.expert\.feature: the env has no document feature 'quality' \(available: clickbait\)"),
], ids=["time_budget", "slate_size_vs_preset", "preset", "mixture_weights", "missing_feature"])
def test_bad_input_fails_through_the_cli_and_writes_nothing(tmp_path, yaml_text, message):
    path = tmp_path / "run.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\n" + yaml_text)
    result = run_cli(path)
    assert result.returncode == 2, result.stderr
    assert any(re.search(message, line) for line in result.stderr.splitlines()), result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_run_prints_summary_and_progress(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\nenv: {{}}\nlogging:\n  num_episodes: 12\n  batch_size: 5\n"
                    "  policy: {type: softmax, temperature: 0.5}\n")
    result = run_cli(path)
    assert result.returncode == 0, result.stderr
    assert "12 episodes, 120 rows" in result.stdout and "12/12" in result.stderr
    assert pq.read_metadata(next((tmp_path / "out" / "mdp").glob("ds=*/part-00000.parquet"))).num_rows == 50


@pytest.mark.recsim
def test_google_recsim_env_writes_the_same_table(tmp_path):
    cfg = validate_config({"output_dir": str(tmp_path / "out"), "seed": 2,
                           "env": {"type": "recsim", "preset": "recsim", "time_budget": 4},
                           "logging": {"num_episodes": 6, "batch_size": 4,
                                       "policy": {"type": "epsilon_greedy", "epsilon": 0.5}}})
    table = read_mdp(stage.offline_gym(cfg)["path"])
    assert table.num_rows == 24 and len(set(table.column("mdp_id").to_pylist())) == 6
    rows = rows_by_episode(table)
    states = [dict(s) for s in rows["state_features"]]
    expert = np.array([max(range(10), key=lambda j, s=s: s[100 + j]) for s in states])
    actions = np.array(rows["action"], dtype=np.int64)
    np.testing.assert_allclose(rows["action_probability"], np.where(actions == expert, 0.55, 0.05))


def test_sample_configs_are_valid():
    from reagent_recsys.config import load_config

    names = sorted(p.name for p in (ROOT / "sample_configs").glob("*.yaml"))
    assert {"sweet_bitter.yaml", "sweet_bitter_latent.yaml", "strong.yaml", "expert_mixture.yaml"} <= set(names)
    for name in names:
        config = load_config(ROOT / "sample_configs" / name)
        if config.simulated:  # a logs run (decision_log.yaml) has no logging section
            assert config.logging.num_episodes >= 1000, name
        else:
            assert config.import_ is not None, name


def test_module_runs_without_recsim_import():
    code = "import sys, workflow.offline_gym; assert 'recsim' not in sys.modules and 'tensorflow' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
