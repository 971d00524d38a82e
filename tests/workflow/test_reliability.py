"""Reliability matrix (issue 12) with the real CLI, Spark, torch and processes, on one tiny shared run.

* config errors: one line naming the dotted field and the --set, exit code 2, no traceback;
* data rules: a null required column is named; a quarantined episode is dropped whole;
* concurrent runs: of two runs started together on one output_dir, one stops at once naming the other;
* SIGKILL of each stage (offline_gym, timeline_operator, identify_normalization, training_table, train) in the
  middle of its work, then a rerun: the previous output was never touched, the rerun sweeps the killed run's
  temporaries (its lock, its JVM's scratch directory) and writes byte-identical tables / bit-identical weights;
* the training table written by a fresh Spark session equals (files, rows, order, row groups) the one written
  after other jobs of a long-lived session;
* a read-only output directory: a Spark stage and training fail with one line naming the path.

One tiny run (module fixture, in this process and the shared Spark session) serves every check: the killed
children run against it, the reruns happen here (after many other Spark jobs). The same matrix elsewhere, on
those modules' own runs: SIGKILL of evaluate then a rerun (tests/workflow/test_evaluate.py); a failed or killed
training swap (tests/training/test_training_output.py); the one-line Spark error raised by the library
(tests/preprocessing/test_spark.py); a changed input reruns its stage (tests/workflow/test_end_to_end.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from reagent_recsys.config import PipelineConfig, validate_config
from tests.conftest import TEST_SPARK
from tests.preprocessing.test_spark import read_only

ROOT = Path(__file__).resolve().parents[2]
TRAINING = {"epochs": 2, "batch_size": 64, "hidden_sizes": [16], "torch_threads": 1, "shuffle_buffer": 500,
            "log_every": 10, "cpe_every_epoch": False}
_PART = re.compile(r"^(\.?part-\d+)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def raw_config(out: Path, **sections: dict) -> dict:
    raw = {"output_dir": str(out), "seed": 5, "env": {"time_budget": 8},
           "logging": {"num_episodes": 400, "batch_size": 200}, "training_table": {"num_files": 4},
           "training": TRAINING, "spark": TEST_SPARK}
    for name, section in sections.items():
        raw[name] = {**raw.get(name, {}), **section}
    return raw


def make_config(out: Path, **sections: dict):
    """A validated config (never model_copy: the Spark stages read output_dir's text kept at validation)."""
    return validate_config(raw_config(out, **sections))


def contents(path: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file below `path` (Spark's random job ids removed from part names)."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    found = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path)
        found[str(rel.parent / _PART.sub(r"\1", rel.name))] = f.read_bytes()
    return found


def leftovers(out: Path) -> list[str]:
    """Hidden temporaries (`.name.tmp-*`, `.name.old-*`, `.resume-*`) anywhere in the run directory."""
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if re.search(r"\.(tmp|old|resume)-", p.name))


@dataclass
class Run:
    out: Path
    config: PipelineConfig
    config_path: Path
    reference: dict[str, Any]
    # checks that need a fresh JVM but no kill, started as soon as their inputs exist (in parallel with the rest)
    read_only: tuple[subprocess.Popen, Path]  # timeline_operator into a read-only output_dir
    fresh: tuple[subprocess.Popen, Path]  # training_table alone in a fresh JVM, into a copy of the run


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, spark):
    """A complete run up to training (in this process, on the shared Spark session) and its outputs' bytes."""
    from workflow.identify_normalization import identify_normalization
    from workflow.offline_gym import offline_gym
    from workflow.timeline_operator import timeline_operator
    from workflow.train import train
    from workflow.training_table import training_table

    out = tmp_path_factory.mktemp("reliability") / "run"
    config = make_config(out)
    config_path = out.parent / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw_config(out)))
    with contextlib.ExitStack() as stack:
        offline_gym(config)
        ro = stack.enter_context(read_only(out.parent / "ro"))
        read_only_run = cli("run", "workflow.timeline_operator", str(config_path), "--set", f"output_dir={ro}",
                            "--set", f"timeline.input_path={out / 'mdp'}")
        stack.callback(stop, read_only_run)
        timeline_operator(config)
        identify_normalization(config)
        copy = out.parent / "fresh"
        shutil.copytree(out, copy)
        fresh_run = cli("run", "workflow.training_table", str(config_path), "--set", f"output_dir={copy}")
        stack.callback(stop, fresh_run)
        training_table(config)
        summary = train(config)
        reference = {name: contents(out / name)
                     for name in ("mdp", "timeline", "normalization.json", "training_table")}
        reference["weights"] = summary["weights_sha256"]
        yield Run(out, config, config_path, reference, (read_only_run, ro), (fresh_run, copy))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def cli(*args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REAGENT_RECSYS_PROGRESS_SECONDS": "1"}
    return subprocess.Popen([sys.executable, str(ROOT / "workflow" / "cli.py"), *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            **popen)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 240) -> None:
    """SIGKILL the process group (Python and its JVM) as soon as `ready()`; fail if it ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the stage ended (code {proc.returncode}) before it could be killed: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("the stage never reached the point to kill it at")
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the stage ended before the kill landed"


def temporary_exists(out: Path, name: str, inside: str = "") -> Callable[[], bool]:
    return lambda: any((p / inside).exists() for p in out.glob(f".{name}.tmp-*"))


def without_timing(files: dict[str, bytes], out: Path) -> dict[str, bytes]:
    """offline_gym's files with the manifest's wall-clock `seconds` and its output_dir left out."""
    manifest = json.loads(files["_manifest.json"].decode().replace(str(out), "OUTPUT_DIR"))
    return {**files, "_manifest.json": json.dumps({**manifest, "seconds": None}, sort_keys=True).encode()}


@pytest.mark.slow
def test_two_runs_at_once_one_stops_naming_the_other_then_sigkill_and_rerun(pipeline, tmp_path):
    """Two real runs started together on one output_dir; the winner is then killed mid-write and the next run
    takes over its lock and writes the same table."""
    out, config_path, reference = pipeline.out, pipeline.config_path, pipeline.reference
    run = tmp_path / "run"
    shutil.copytree(out / "mdp", run / "mdp")
    big = ("--set", f"output_dir={run}", "--set", "logging.num_episodes=3000000", "--set", "seed=9")
    racers = [cli("run", "offline_gym", str(config_path), *big) for _ in range(2)]
    deadline = time.monotonic() + 120
    while all(proc.poll() is None for proc in racers):
        assert time.monotonic() < deadline, "neither run stopped: both hold the output_dir?"
        time.sleep(0.05)
    loser, winner = sorted(racers, key=lambda proc: proc.poll() is None)
    stderr = loser.communicate(timeout=60)[1]
    assert loser.returncode == 1 and winner.poll() is None, stderr
    first = stderr.splitlines()[0]
    assert first.startswith(f"error: {run}: another run is using this output_dir (pid {winner.pid} on "), stderr
    assert "Traceback" not in stderr and not list(run.glob(f".mdp.tmp-{loser.pid}-*"))

    kill_when(winner, lambda: bool(list(run.glob(".mdp.tmp-*/ds=*/part-00001.parquet"))))  # mid-write
    assert contents(run / "mdp") == reference["mdp"]  # the previous table, untouched
    assert leftovers(run)
    rerun = cli("run", "offline_gym", str(config_path), "--set", f"output_dir={run}")
    stderr = rerun.communicate(timeout=120)[1]
    assert rerun.returncode == 0, stderr
    assert f"taking over the lock of a run that did not finish (pid {winner.pid} on " in stderr
    assert leftovers(run) == []
    assert without_timing(contents(run / "mdp"), run) == without_timing(reference["mdp"], out)


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "output", "inside"), [
    ("workflow.timeline_operator", "timeline", "_parts"),
    ("workflow.training_table", "training_table", "train"),
])
def test_sigkill_mid_write_then_rerun_is_byte_identical(pipeline, stage, output, inside):
    from workflow.registry import get_workflow

    out, config, config_path, reference = pipeline.out, pipeline.config, pipeline.config_path, pipeline.reference
    proc = cli("run", stage, str(config_path))
    kill_when(proc, temporary_exists(out, output, inside))
    assert contents(out / output) == reference[output]  # the complete previous output, untouched
    assert leftovers(out)  # the killed writer's temporary is there...
    scratch = list(Path(tempfile.gettempdir()).glob(f"reagent_recsys-spark-*-{proc.pid}"))
    assert scratch  # the killed process's Spark scratch directory (spark.local.dir, java.io.tmpdir)
    get_workflow(stage).load()(config)  # ...until the rerun (this session has run many other jobs)
    assert leftovers(out) == []
    assert contents(out / output) == reference[output]
    assert not [p for p in scratch if p.exists()]  # the killed JVM's blockmgr-*/spark-* directories


@pytest.mark.slow
def test_sigkill_normalization_then_rerun_is_byte_identical(pipeline):
    from workflow.identify_normalization import identify_normalization

    out, config, config_path, reference = pipeline.out, pipeline.config, pipeline.config_path, pipeline.reference
    proc = cli("run", "workflow.identify_normalization", str(config_path))
    lines: list[str] = []

    def spark_working() -> bool:  # the first progress line: statistics are being computed
        line = proc.stderr.readline()
        lines.append(line)
        return line.startswith("identify_normalization: ") or not line

    kill_when(proc, spark_working)
    assert lines[-1], "no progress line before the stage ended"
    assert contents(out / "normalization.json") == reference["normalization.json"]
    identify_normalization(config)
    assert contents(out / "normalization.json") == reference["normalization.json"] and leftovers(out) == []


@pytest.mark.slow
def test_sigkill_training_keeps_the_previous_model_and_resume_is_bit_identical(pipeline):
    from workflow.train import train

    out, config_path = pipeline.out, pipeline.config_path
    before = contents(out / "training")
    proc = cli("run", "workflow.train", str(config_path), "--set", "training.epochs=5")
    kill_when(proc, temporary_exists(out, "training", "checkpoints/epoch_0002.pt"))
    after = {k: v for k, v in contents(out / "training").items() if not k.startswith("tensorboard")}
    assert after == {k: v for k, v in before.items() if not k.startswith("tensorboard")}  # never a mix
    resumed = train(make_config(out, training={"epochs": 5, "resume": True}))
    # the killed run's own newest checkpoint (epoch 2, or later if it got there before the kill landed)
    assert re.search(r"epoch_000[234]\.pt$", resumed["resumed_from"]), resumed["resumed_from"]
    assert leftovers(out) == []
    clean = train(make_config(out, training={"epochs": 5}))
    assert resumed["weights_sha256"] == clean["weights_sha256"]
    assert json.loads((out / "training" / "summary.json").read_text())["weights_sha256"] == clean["weights_sha256"]


@pytest.mark.slow
def test_training_table_of_a_fresh_session_equals_the_shared_sessions(pipeline):
    """The same files, rows, order and row groups from a fresh JVM as from this long-lived session.

    Not the same bytes: parquet-mr writes each column chunk's set of encodings in a JVM-dependent order (a
    HashSet of enums) in the footer; within one JVM (the SIGKILL reruns above) the bytes are identical.
    """
    import pyarrow.parquet as pq

    (done, copy), out = pipeline.fresh, pipeline.out
    stderr = done.communicate(timeout=300)[1]
    assert done.returncode == 0, stderr
    for split in ("train", "eval"):
        fresh = sorted((copy / "training_table" / split).glob("part-*.parquet"))
        shared = sorted((out / "training_table" / split).glob("part-*.parquet"))
        assert len(fresh) == len(shared) == 4
        for a, b in zip(fresh, shared, strict=True):
            fa, fb = pq.ParquetFile(a), pq.ParquetFile(b)
            assert [fa.metadata.row_group(i).num_rows for i in range(fa.num_row_groups)] == [
                fb.metadata.row_group(i).num_rows for i in range(fb.num_row_groups)]
            assert fa.read().equals(fb.read()) and fa.metadata.metadata == fb.metadata.metadata


@pytest.mark.slow
def test_read_only_output_dir_gives_one_line(pipeline):
    proc, ro = pipeline.read_only
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 1
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and f"{ro}/timeline" in errors[0] and "Traceback" not in stderr, stderr
    # not ~400 lines of JVM trace: besides the progress lines (one a second), the JVM's banner and the error
    other = [line for line in stderr.splitlines() if not line.startswith("timeline_operator: ")]
    assert len(other) < 12, stderr
    assert not [line for line in stderr.splitlines() if line.lstrip().startswith("at org.")]
    assert list(ro.iterdir()) == []


def test_training_into_a_read_only_dir_names_the_path(pipeline, tmp_path):
    from workflow.train import train

    out = pipeline.out
    copy = tmp_path / "run"
    shutil.copytree(out / "training_table", copy / "training_table")
    shutil.copy(out / "normalization.json", copy / "normalization.json")
    with read_only(copy), pytest.raises(OSError, match=re.escape(str(copy))):
        train(make_config(copy))
    assert not (copy / "training").exists()


CONFIG_ERRORS = [
    ("training.epochs=true", "training.epochs: expected a number or text, got a boolean"),
    ("output_dir=''", "output_dir: must not be empty"),
    ("training.learning_rate=.inf", "training.learning_rate: must be a finite number"),
    ("training.batch_size=[1", "--set 'training.batch_size=[1': the value is not valid YAML"),
]


def test_config_errors_are_one_line_naming_the_field_and_the_set(tmp_path):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw_config(tmp_path / "out")))
    procs = [cli("run", "workflow.train", str(config_path), "--set", override) for override, _ in CONFIG_ERRORS]
    for proc, (override, expected) in zip(procs, CONFIG_ERRORS, strict=True):  # all four at once
        stderr = proc.communicate(timeout=120)[1]
        assert proc.returncode == 2 and expected in stderr and "Traceback" not in stderr, (override, stderr)
        assert len(stderr.splitlines()) <= 2, stderr  # the file's name, then the field's line
    assert not (tmp_path / "out").exists()


def test_data_rules_name_the_null_column_and_quarantine_drops_whole_episodes(pipeline, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from preprocessing.timeline import DataValidationError
    from workflow.timeline_operator import timeline_operator

    out = pipeline.out
    table = pq.read_table(out / "mdp")
    rows = table.to_pylist()
    broken_episode = rows[10]["mdp_id"]
    for row in rows:
        if row["mdp_id"] == broken_episode and row["sequence_number"] == 3:
            row["action"] = None
    # nullable, as logs are (Spark drops isNull() checks on a column its Parquet schema declares non-null)
    schema = pa.schema([(f.with_type(pa.string()) if f.name == "ds" else f).with_nullable(True)
                        for f in table.schema])
    pq.write_to_dataset(pa.Table.from_pylist(rows, schema=schema), str(tmp_path / "mdp"), partition_cols=["ds"])
    broken = {"timeline": {"input_path": str(tmp_path / "mdp")}}
    with pytest.raises(DataValidationError, match=r"rule null_required: column action is null in 1 rows"):
        timeline_operator(make_config(tmp_path / "o", **broken))
    timeline_operator(make_config(tmp_path / "o", timeline={**broken["timeline"], "on_invalid": "quarantine"}))
    manifest = json.loads((tmp_path / "o" / "timeline" / "_manifest.json").read_text())
    assert manifest["quarantine"]["example_mdp_ids"] == [broken_episode]
    assert manifest["quarantine"]["rows_dropped_with_episode"] == 7  # the episode's 7 other steps
    kept = [r["mdp_id"] for split in ("train", "eval")
            for r in pq.read_table(tmp_path / "o" / "timeline" / split, columns=["mdp_id"]).to_pylist()]
    assert broken_episode not in kept and len(kept) == len(rows) - 8
