"""The command line as a user types it: names, --version, list, validate, --json, config.yaml, the summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from reagent_recsys import __version__
from workflow.registry import WORKFLOWS

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, str(ROOT / "workflow" / "cli.py")]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def tiny_gym_config(tmp_path: Path) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "seed": 1, "env": {"preset": "sweet_bitter"},
                                    "logging": {"num_episodes": 20, "batch_size": 8}}))
    return path


def test_version_and_list_in_pipeline_order():
    assert cli("--version").stdout.strip().endswith(__version__)
    listed = [line.split()[0] for line in cli("list").stdout.splitlines()]
    assert listed == [w.short_name for w in WORKFLOWS.values()]
    assert listed.index("offline_gym") < listed.index("timeline_operator") < listed.index("train") \
        < listed.index("export") < listed.index("evaluate")


def test_unknown_workflow_gets_a_suggestion_in_one_line(tmp_path):
    done = cli("run", "workflow.trian", str(tiny_gym_config(tmp_path)))
    assert done.returncode == 1
    assert done.stderr.splitlines()[0] == ("error: unknown workflow 'workflow.trian'; did you mean workflow.train? "
                                           "(`list` shows them all)")
    assert not (tmp_path / "out").exists()


def test_validate_prints_the_values_actually_used(tmp_path):
    done = cli("validate", str(tiny_gym_config(tmp_path)))
    assert done.returncode == 0, done.stderr
    env = yaml.safe_load(done.stdout)["env"]
    assert env["time_budget"] == 10 and env["num_candidates"] == 20 and env["initial_npe"] == 1.0  # the preset's
    assert None not in env.values()


def test_validate_names_the_field_without_a_traceback(tmp_path):
    done = cli("validate", str(tiny_gym_config(tmp_path)), "--set", "training.lerning_rate=0.1")
    assert done.returncode == 2
    assert "training.lerning_rate: unknown key (did you mean learning_rate?)" in done.stderr
    assert "Traceback" not in done.stderr


def test_short_name_json_output_and_resolved_config(tmp_path):
    config = tiny_gym_config(tmp_path)
    done = cli("run", "offline_gym", str(config), "--json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)  # nothing but JSON on stdout; progress went to stderr
    assert payload["workflow"] == "workflow.offline_gym" and payload["result"]["episodes"] == 20
    assert "offline_gym" in done.stderr
    written = yaml.safe_load((tmp_path / "out" / "config.yaml").read_text())
    assert written["env"]["time_budget"] == 10 and written["logging"]["num_episodes"] == 20


def test_human_summary_names_the_key_figures(tmp_path):
    done = cli("run", "workflow.offline_gym", str(tiny_gym_config(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("workflow.offline_gym finished in ")
    assert "20 episodes" in done.stdout and "logged mean return" in done.stdout


def test_recsim_env_without_the_extra_says_how_to_add_it(tmp_path):
    config = tmp_path / "recsim.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "env": {"type": "recsim"},
                                      "logging": {"num_episodes": 2, "batch_size": 2}}))
    # the runtime environment as ./run.sh builds it: google recsim cannot be imported
    code = ("import runpy, sys\nsys.modules['recsim'] = None\n"
            f"sys.argv = ['cli.py', 'run', 'offline_gym', {str(config)!r}]\n"
            f"runpy.run_path({str(ROOT / 'workflow' / 'cli.py')!r}, run_name='__main__')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "config error: env.type: recsim needs google recsim, which "
        "the runtime environment leaves out (it brings tensorflow, +1.1 GB); add it with "
        "./scripts/install_extra.sh recsim"]
