"""Training output is replaced as a whole: a failed run leaves the previous one; TensorBoard runs accumulate."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from reagent_recsys.data.loaders import DataError
from reagent_recsys.training.output import TrainingOutput, recover
from reagent_recsys.training.run import train
from tests.training.helpers import load_events, make_run, tensorboard_runs, tiny_config


def _snapshot(training: Path) -> dict[str, bytes]:
    """Every file of the training output except TensorBoard's, by relative path."""
    return {str(p.relative_to(training)): p.read_bytes() for p in sorted(training.rglob("*"))
            if p.is_file() and "tensorboard" not in p.parts}


def _break_table(out: Path) -> None:
    """Make one file of the train split break a loader rule (an action index out of range)."""
    path = sorted((out / "training_table" / "train").glob("*.parquet"))[-1]
    table = pq.read_table(path)
    actions = table.column("action").to_pylist()
    actions[-1] = 99
    import pyarrow as pa

    table = table.set_column(table.schema.get_field_index("action"), "action", pa.array(actions, pa.int64()))
    pq.write_table(table, path, row_group_size=250)


def test_failed_run_leaves_previous_output_and_runs_accumulate(tmp_path):
    out = make_run(tmp_path)
    first = train(tiny_config(out, epochs=1))
    before = _snapshot(out / "training")
    assert {"model.pt", "summary.json", "checkpoints/epoch_0001.pt"} <= set(before)
    _break_table(out)
    with pytest.raises(DataError, match="action"):
        train(tiny_config(out, epochs=2, learning_rate=0.01))
    assert _snapshot(out / "training") == before  # untouched: same model, summary and checkpoints
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary left
    make_run(out)  # a good table again: retrain with another config
    second = train(tiny_config(out, epochs=2, learning_rate=0.01))
    runs = tensorboard_runs(out)
    assert len(runs) == 3 and runs[0].name == first["tensorboard_run"] and runs[-1].name == second["tensorboard_run"]
    assert sorted(p.name for p in (out / "training" / "checkpoints").iterdir()) == ["epoch_0001.pt", "epoch_0002.pt"]


def test_resume_continues_the_complete_output_and_its_tensorboard_run(tmp_path):
    out = make_run(tmp_path)
    first = train(tiny_config(out, epochs=1))
    resumed = train(tiny_config(out, epochs=2, resume=True))
    assert resumed["resumed_from"] == str(out / "training" / "checkpoints" / "epoch_0001.pt")
    assert resumed["tensorboard_run"] == first["tensorboard_run"] and len(tensorboard_runs(out)) == 1
    steps = [e.step for e in load_events(tensorboard_runs(out)[0]).Scalars("train/td_loss")]
    assert steps == [5, 10, 15, 16, 20, 25, 30, 32]  # one curve, continued
    fresh = train(tiny_config(make_run(tmp_path / "fresh"), epochs=2))
    assert resumed["weights_sha256"] == fresh["weights_sha256"]


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.mark.parametrize("killed_after", ["tensorboard_moved", "old_renamed", "swapped"])
def test_recover_repairs_a_swap_killed_at_any_point(tmp_path, killed_after):
    """A commit killed between two of its renames: the next run sees one complete output and every TB run."""
    final = tmp_path / "training"
    for name, content in (("model.pt", b"old"), ("tensorboard/run-a/events", b"a")):
        (final / name).parent.mkdir(parents=True, exist_ok=True)
        (final / name).write_bytes(content)
    pid = _dead_pid()
    work = tmp_path / f".training.tmp-{pid}-abc"
    (work / "checkpoints").mkdir(parents=True)
    (work / "model.pt").write_bytes(b"new")
    (work / "tensorboard" / "run-b").mkdir(parents=True)  # the new run's events, written live
    (work / "tensorboard" / "run-b" / "events").write_bytes(b"b")
    (final / "tensorboard" / "run-a").rename(work / "tensorboard" / "run-a")  # (a)
    (final / "tensorboard").rmdir()
    if killed_after in ("old_renamed", "swapped"):
        final.rename(tmp_path / f".training.old-{pid}-abc")  # (b)
    if killed_after == "swapped":
        work.rename(final)  # (c)
    recover(final)
    expected = b"new" if killed_after == "swapped" else b"old"
    assert (final / "model.pt").read_bytes() == expected
    assert sorted(p.name for p in (final / "tensorboard").iterdir()) == ["run-a", "run-b"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_checkpoint_write_leaves_no_temporary(tmp_path):
    from reagent_recsys.training.trainer import save_atomic

    target = tmp_path / "checkpoints" / "epoch_0001.pt"
    with pytest.raises(Exception):  # noqa: B017 - torch.save's own error type for an unpicklable object
        save_atomic({"bad": lambda: None}, target)
    assert list(target.parent.iterdir()) == []


def test_temporaries_of_live_processes_are_left_alone(tmp_path):
    final = tmp_path / "training"
    live = tmp_path / f".training.tmp-{os.getpid()}-live"
    live.mkdir()
    output = TrainingOutput.begin(final, resume=False)
    assert live.exists() and output.work.exists()
    output.abort()
    assert not output.work.exists()
    # a real SIGKILL of `cli.py run workflow.train`, then resume: tests/workflow/test_reliability.py


def test_an_empty_eval_split_is_one_line_not_a_failure(tmp_path, capsys):
    """Issue 12.8: an empty eval split used to end training with a shape error from the per-epoch CPE."""
    out = make_run(tmp_path)
    eval_dir = out / "training_table" / "eval"
    eval_dir.mkdir()
    empty = pq.read_table(sorted((out / "training_table" / "train").glob("*.parquet"))[0]).slice(0, 0)
    pq.write_table(empty, eval_dir / "part-00000.parquet")
    summary = train(tiny_config(out, epochs=1))
    assert summary["epochs"] == 1
    said = [line for line in capsys.readouterr().err.splitlines() if "has 0 rows" in line]
    assert len(said) == 1 and "training_table/eval" in said[0], said
