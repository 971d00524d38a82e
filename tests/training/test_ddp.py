"""Two real processes under torchrun (gloo on CPU) train on disjoint shards and end with identical replicas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.training.helpers import make_run

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_ddp_replicas_match(tmp_path):
    out = make_run(tmp_path / "run", train_rows=2000)  # 8 row groups of 250 -> 1000 rows per rank
    config = {"output_dir": str(out), "seed": 2,
              "training": {"epochs": 2, "batch_size": 128, "hidden_sizes": [32, 16], "torch_threads": 1,
                           "shuffle_buffer": 300, "log_every": 4}}
    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "workflow.train_ddp", str(config_path)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "training" / "summary.json").read_text())
    assert summary["world_size"] == 2
    first, second = summary["replica_weights_sha256"]
    assert first == second == summary["weights_sha256"]
    assert summary["rows_seen_per_rank"] == [2000, 2000]  # each rank: its 1000-row shard, twice
    assert summary["updates"] == 2 * 8
    assert (out / "training" / "model.pt").exists()
    assert sorted(p.name for p in (out / "training" / "checkpoints").glob("*.pt")) == ["epoch_0001.pt",
                                                                                       "epoch_0002.pt"]


@pytest.mark.slow
def test_num_processes_launches_torchrun_from_workflow_train(tmp_path):
    """`training.num_processes: 2` makes workflow.train (so end_to_end) run DDP itself and keep its model."""
    from reagent_recsys.training.run import train
    from tests.training.helpers import tiny_config

    out = make_run(tmp_path / "run", train_rows=2000)
    summary = train(tiny_config(out, epochs=1, num_processes=2, shuffle_buffer=300))
    assert summary["world_size"] == 2 and summary["rows_seen_per_rank"] == [1000, 1000]
    assert summary["replica_weights_sha256"] == [summary["weights_sha256"]] * 2
    on_disk = json.loads((out / "training" / "summary.json").read_text())
    assert on_disk["weights_sha256"] == summary["weights_sha256"] and (out / "training" / "model.pt").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
