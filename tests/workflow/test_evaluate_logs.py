"""workflow.evaluate on a logs run (no `env`): a written training table with string action names, a TorchScript
candidate and a probability-table candidate ranked in one report; bad tables fail with one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor, nn

from reagent_recsys.artifacts import write_json_atomic
from reagent_recsys.config import validate_config
from reagent_recsys.data.keys import mdp_keys
from reagent_recsys.data.synthetic import write_training_split
from reagent_recsys.evaluation.bootstrap import EvaluationDataError
from tests.evaluation.test_cpe import STEP_VALUE, TRUE_VALUE, logs, target_of
from workflow.evaluate import evaluate

ACTIONS = ["item_0", "item_1", "item_2"]
FEATURE_IDS = [7, 9]


class Threshold(nn.Module):
    """The exported interface: item_0 when the first feature > 0.5, else item_1 (greedy)."""

    def forward(self, state: Tensor, presence: Optional[Tensor] = None,  # noqa: UP045 (TorchScript)
                possible_actions_mask: Optional[Tensor] = None) -> dict[str, Tensor]:  # noqa: UP045
        q = torch.stack([state[:, 0], torch.full_like(state[:, 0], 0.5), torch.zeros_like(state[:, 0])], dim=1)
        return {"q_values": q, "action": q.argmax(dim=1), "action_probabilities": torch.softmax(q * 100.0, dim=1)}


def mdp_ids(split: dict[str, np.ndarray]) -> np.ndarray:
    return np.array([f"session-{k}" for k in split["mdp_key"]], dtype=object)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A logs run's output_dir: training_table/{train,eval} keyed by xxhash64 of string mdp_ids, two candidates."""
    root = tmp_path_factory.mktemp("logs_run")
    splits = {"train": logs(1500, seed=0), "eval": logs(1500, seed=1)}
    frames = []
    for name, split in splits.items():
        ids = mdp_ids(split)
        write_training_split(root / "training_table" / name, {**split, "mdp_key": mdp_keys(ids)})
        frames.append(pd.DataFrame({"mdp_id": ids, "sequence_number": split["sequence_number"],
                                    **dict(zip(ACTIONS, target_of(split["state"][:, 0]).T, strict=True))}))
    write_json_atomic(root / "training_table" / "_manifest.json", {"feature_ids": FEATURE_IDS, "action_names": ACTIONS})
    pd.concat(frames).to_parquet(root / "softmax.parquet")
    metadata = {"feature_ids": FEATURE_IDS, "action_names": ACTIONS, "greedy": True}
    torch.jit.script(Threshold()).save(str(root / "threshold.pt"),
                                       _extra_files={"metadata.json": json.dumps(metadata)})
    return root


def logs_config(root: Path, policies: list[dict]):
    return validate_config({"output_dir": str(root), "seed": 0, "evaluation": {
        "fqe_iterations": 5, "fqe_epochs": 3, "fqe_hidden_sizes": [32], "fqe_learning_rate": 5e-3,
        "fqe_batch_size": 128, "reward_model_epochs": 8, "model_bootstrap_fits": 2, "model_refit_fraction": 1.0,
        "bootstrap_samples": 100, "history_decays": [1.0], "policies": policies}})


def test_candidates_are_ranked_in_one_report_without_truth(run_dir):
    config = logs_config(run_dir, [{"name": "softmax", "path": str(run_dir / "softmax.parquet")},
                                   {"name": "threshold", "path": str(run_dir / "threshold.pt")}])
    assert config.env is None
    summary = evaluate(config)
    report = json.loads(Path(summary["report_json"]).read_text())
    assert "truth" not in json.dumps({k: v for k, v in report.items() if k != "summary"})
    assert "ground_truth" not in report and "true_return" not in summary
    softmax = {e["name"]: e for e in report["policies"][0]["sequential"]}
    assert softmax["DR"]["value"] == pytest.approx(TRUE_VALUE, rel=0.03)  # coverage: tests/evaluation/test_cpe.py
    ips = next(e for e in report["policies"][0]["one_step"] if e["name"] == "IPS")
    assert ips["lower"] <= STEP_VALUE <= ips["upper"]
    order = [r["name"] for r in report["ranking"]["sequential/DR"]["order"]]
    assert order == ["threshold", "softmax", "logging"]  # greedy threshold 3 * 0.625 > softmax 1.61 > logged 1.0
    assert ["threshold", "logging"] not in report["ranking"]["sequential/DR"]["not_separated"]
    assert summary["summary"]["truth"] is None and summary["summary"]["policy"]["name"] == "softmax"
    assert "better than" in summary["summary"]["verdict"]
    assert report["training_curve"] == [] and report["training_curve_source"] == "per-epoch CPE"
    trust = report["policies"][1]["trust"]
    assert trust["one_step/IPS"]["weights"]["ess"] > 0 and trust["one_step/IPS"]["unsupported_share"] == 0.0
    assert Path(summary["report_png"]).stat().st_size > 20_000


def bad_table(root: Path, change) -> Path:
    frame = pd.read_parquet(root / "softmax.parquet").reset_index(drop=True)
    path = root / f"bad-{change.__name__}.parquet"
    change(frame).to_parquet(path)
    return path


def negative(frame):
    frame.iloc[:4, frame.columns.get_loc("item_2")] = -0.1
    return frame


def missing_rows(frame):
    return frame.iloc[:-30]


def not_summing(frame):
    frame.iloc[5:12, frame.columns.get_loc("item_0")] += 0.2
    return frame


def unknown_action(frame):
    return frame.rename(columns={"item_2": "item_9"})


@pytest.mark.parametrize(("change", "message"), [
    (negative, r"rule 'probabilities are finite and >= 0' broken by 4 rows, e\.g\. \(mdp_id, sequence_number\) "
               r"\(session-0, 0\)"),
    (missing_rows, r"rule 'a row for every eval row' broken: 30 of 4500 eval rows missing"),
    (not_summing, r"rule 'probabilities sum to 1 over the possible actions' broken by 7 train rows"),
    (unknown_action, r"1 unknown columns, e\.g\. \['item_9'\]"),
])
def test_a_bad_table_fails_with_one_line(run_dir, change, message):
    config = logs_config(run_dir, [{"name": "bad", "path": str(bad_table(run_dir, change))}])
    with pytest.raises(EvaluationDataError, match=message) as info:
        evaluate(config)
    assert "\n" not in str(info.value)


def test_logs_run_training_curve_is_per_epoch_cpe_of_the_checkpoints(tmp_path):
    """train -> export -> evaluate with no env: the curve is the checkpoints' CPE, the exported policy headlines."""
    from reagent_recsys.data.synthetic import write_synthetic_run
    from workflow.export import export
    from workflow.train import train

    write_synthetic_run(tmp_path, 2000, eval_rows=1000, num_features=6, num_actions=5, row_group_size=250)
    config = validate_config({"output_dir": str(tmp_path), "seed": 3, "training": {
        "epochs": 2, "batch_size": 128, "hidden_sizes": [32, 16], "shuffle_buffer": 500, "torch_threads": 1},
        "evaluation": {"fqe_iterations": 3, "fqe_epochs": 1, "reward_model_epochs": 2, "model_bootstrap_fits": 1,
                       "bootstrap_samples": 40, "history_decays": []}})
    train(config)
    export(config)
    summary = evaluate(config)
    report = json.loads(Path(summary["report_json"]).read_text())
    assert [p["epoch"] for p in report["training_curve"]] == [1, 2]
    for point in report["training_curve"]:
        wdr = point["sequential/WDR"]
        assert wdr["lower"] <= wdr["value"] <= wdr["upper"]
    assert report["policies"][0]["name"] == "policy" and "TorchScript" in report["policies"][0]["source"]
    assert "ground_truth" not in report and summary["summary"]["truth"] is None
