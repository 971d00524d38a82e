"""workflow.train end to end on a tiny synthetic run: outputs, TensorBoard, checkpoints, resume, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from reagent_recsys.data.synthetic import synthetic_normalization
from reagent_recsys.training.run import train
from reagent_recsys.training.trainer import load_model
from tests.training.helpers import load_events, make_run, tensorboard_runs, tiny_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    out = make_run(tmp_path_factory.mktemp("run"))
    return out, train(tiny_config(out, epochs=2))


def test_outputs_and_summary(trained):
    out, summary = trained
    assert summary["updates"] == 2 * 16  # 2000 rows / 128 per batch -> 16 batches per epoch
    assert summary["epochs"] == 2 and summary["rows_seen_rank"] == 4000
    on_disk = json.loads((out / "training" / "summary.json").read_text())
    assert on_disk["weights_sha256"] == summary["weights_sha256"]
    model, payload = load_model(out / "training" / "model.pt")
    assert payload["action_names"] == ["0", "1", "2", "3", "4"] and payload["feature_ids"] == [1, 2, 3, 4, 5, 6]
    assert model(torch.zeros(3, 6))[0].shape == (3, 5)


def test_checkpoints_load_with_weights_only(trained):
    out, _ = trained
    checkpoints = sorted((out / "training" / "checkpoints").glob("epoch_*.pt"))
    assert [p.name for p in checkpoints] == ["epoch_0001.pt", "epoch_0002.pt"]
    state = torch.load(checkpoints[-1], weights_only=True)
    assert state["epoch"] == 2 and state["step"] == 32 and "optimizer" in state
    torch.load(out / "training" / "model.pt", weights_only=True)


def test_tensorboard_events_have_the_tags(trained):
    out, summary = trained
    (run,) = tensorboard_runs(out)
    assert run.name == summary["tensorboard_run"] and run.name.endswith(summary["config_hash"][:8])
    events = load_events(run)
    tags = set(events.Tags()["scalars"])
    for tag in ("train/td_loss", "train/q_mean", "train/q_max", "train/grad_norm", "train/learning_rate"):
        assert tag in tags, (tag, sorted(tags))
    assert "train/loss" not in tags and "train/total_loss" not in tags  # DQN: the loss is the TD loss
    assert not [t for t in tags if t.startswith("actions/")]  # one figure per epoch instead of 2 x A charts
    # every 5 updates, plus the last update of each epoch (16 and 32 are not multiples of 5)
    assert [e.step for e in events.Scalars("train/td_loss")] == [5, 10, 15, 16, 20, 25, 30, 32]
    assert [e.step for e in events.Images("actions/logged_vs_model")] == [1, 2]
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["training.batch_size"].number_value == 128
    assert start.hparams["training.algorithm"].string_value == "dqn"


def test_short_run_logs_and_eval_td_loss(tmp_path):
    from reagent_recsys.data.synthetic import write_synthetic_run
    from tests.training.helpers import TINY

    write_synthetic_run(tmp_path, 300, eval_rows=100, seed=0, **TINY)
    summary = train(tiny_config(tmp_path, epochs=2, log_every=1000, cpe_every_epoch=False))
    events = load_events(tensorboard_runs(tmp_path)[0])
    assert [e.step for e in events.Scalars("train/td_loss")] == [3, 6]  # 3 updates per epoch < log_every
    losses = events.Scalars("eval/td_loss")
    assert [e.step for e in losses] == [1, 2] and all(e.value > 0 for e in losses)  # x axis: epochs
    assert summary["updates"] == 6


def test_same_seed_same_weights_and_resume_matches(tmp_path, trained):
    _, summary = trained
    again = train(tiny_config(make_run(tmp_path / "again"), epochs=2))
    assert again["weights_sha256"] == summary["weights_sha256"]
    other = validate_seed(make_run(tmp_path / "other"), seed=4)
    assert other["weights_sha256"] != summary["weights_sha256"]
    # Continue the 2-epoch run to 3 epochs; it must equal a fresh 3-epoch run.
    fresh = train(tiny_config(make_run(tmp_path / "fresh"), epochs=3))
    resumed = train(tiny_config(tmp_path / "again", epochs=3, resume=True))
    assert resumed["resumed_from"].endswith("epoch_0002.pt")
    assert resumed["updates"] == fresh["updates"] == 48
    assert resumed["weights_sha256"] == fresh["weights_sha256"]


def validate_seed(out: Path, seed: int) -> dict:
    config = tiny_config(out, epochs=2)
    config.seed = seed
    return train(config)


@pytest.mark.parametrize("loader", ["arrow", "petastorm"])
def test_max_steps_stops_early(tmp_path, loader):
    summary = train(tiny_config(make_run(tmp_path), epochs=5, max_steps=20, loader=loader))
    assert summary["updates"] == 20 and summary["epochs"] == 2 and summary["loader"] == loader


def test_feature_mismatch_is_reported(tmp_path):
    out = make_run(tmp_path)
    synthetic_normalization([1, 2, 3]).save(out / "normalization.json")
    with pytest.raises(ValueError, match="feature_ids .* differ from .*normalization.json"):
        train(tiny_config(out))


def test_missing_inputs_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="workflow.training_table"):
        train(tiny_config(tmp_path))
