"""A logs run end to end: sample_configs/decision_log.yaml over the synthetic decision log, with no simulator.

One guarded run of `workflow.end_to_end` in a fresh process in which importing the simulator (reagent_recsys.envs,
workflow.offline_gym, recsim) raises, so a logs run provably never simulates. The true value of the exported
policy on the eval split is known exactly (the generator's reward function over the logged contexts), so the
counterfactual estimate can be checked against it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from reagent_recsys.data.decision_log import DecisionLogSpec, policy_value, write_decision_log
from tests.conftest import TEST_SPARK

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "sample_configs" / "decision_log.yaml"

GUARDED_RUN = """
import importlib.abc, sys
class NoSimulator(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(("reagent_recsys.envs", "recsim")) or name == "workflow.offline_gym":
            raise ImportError(f"a logs run imported the simulator module {name}")
        return None
sys.meta_path.insert(0, NoSimulator())
sys.argv = ["cli.py", "run", "workflow.end_to_end", *sys.argv[1:]]
from workflow.cli import main
main()
"""


@pytest.fixture(scope="module")
def logs_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs_run")
    write_decision_log(root / "data", DecisionLogSpec())
    overrides = [f"output_dir={root / 'out'}", f"import.path={root / 'data' / 'decisions.csv'}",
                 f"import.items.path={root / 'data' / 'items.csv'}", "spark.master=local[2]",
                 f"spark.conf={json.dumps(TEST_SPARK['conf'])}"]
    proc = subprocess.run(
        [sys.executable, "-c", GUARDED_RUN, str(CONFIG), *[x for o in overrides for x in ("--set", o)]],
        cwd=ROOT, capture_output=True, text=True, timeout=1500,
    )
    return root, proc


def eval_truth(root: Path) -> float:
    """The exact per-decision value of the exported policy over the eval split's logged contexts."""
    import torch

    from preprocessing.spark import get_spark

    table = pq.read_table(root / "out" / "training_table" / "eval").to_pandas()
    manifest = json.loads((root / "out" / "training_table" / "_manifest.json").read_text())
    policy = torch.jit.load(str(root / "out" / "export" / "policy.pt"))
    state = torch.tensor(np.stack(table["state"].to_numpy()))
    presence = torch.tensor(np.stack(table["state_presence"].to_numpy()))
    mask = torch.tensor(np.stack(table["possible_actions_mask"].to_numpy()))
    with torch.no_grad():
        actions = policy(state, presence, mask)["action"].numpy()
    chosen = np.asarray(manifest["action_names"])[actions]

    decisions = pd.read_csv(root / "data" / "decisions.csv")
    keys = get_spark().createDataFrame(pd.DataFrame({"session_id": decisions["session_id"].unique()})).selectExpr(
        "session_id", "xxhash64(session_id) AS mdp_key").toPandas()
    rows = table[["mdp_key", "sequence_number"]].merge(
        decisions.merge(keys, on="session_id"), left_on=["mdp_key", "sequence_number"],
        right_on=["mdp_key", "step"], how="left", validate="one_to_one")
    assert rows["session_id"].notna().all()
    assert all(c in cands.split("|") for c, cands in zip(chosen, rows["candidates"], strict=True))
    return float(policy_value(rows, pd.read_csv(root / "data" / "items.csv"), chosen).mean())


@pytest.mark.slow
def test_logs_run_never_simulates_and_learns_from_the_logs(logs_run):
    root, proc = logs_run
    ledger = json.loads((root / "out" / "_stages.json").read_text())
    assert "workflow.offline_gym" not in ledger and "simulator" not in proc.stderr.split("evaluate")[0]
    for stage in ("workflow.import_logs", "workflow.timeline_operator", "workflow.identify_normalization",
                  "workflow.training_table", "workflow.train", "workflow.export"):
        assert stage in ledger, proc.stderr[-2000:]
    split = json.loads((root / "out" / "timeline" / "_manifest.json").read_text())["split"]
    assert split["method"] == "time" and split["ds_range"]["train"][1] < "2026-01-09" <= split["ds_range"]["eval"][0]
    truth = json.loads((root / "data" / "truth.json").read_text())  # exact values over all logged contexts
    learned = eval_truth(root)
    assert learned > truth["logging_value"] + 0.1, (learned, truth)  # it learned something real from the logs


@pytest.mark.slow
def test_logs_run_estimate_covers_the_true_policy_value(logs_run):
    root, proc = logs_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((root / "out" / "evaluation" / "report.json").read_text())
    assert "ground_truth" not in report or not report["ground_truth"]  # CPE only, no simulated truth
    dr = next(e for e in report["policies"][0]["one_step"] if e["name"] == "DR")
    learned = eval_truth(root)
    assert dr["lower"] <= learned <= dr["upper"], (dr, learned)
