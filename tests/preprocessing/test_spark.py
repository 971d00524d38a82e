"""The Spark stage wrapper: one-line errors, progress lines, and the sweep of killed writers' leftovers."""

from __future__ import annotations

import contextlib
import io as textio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from preprocessing import io
from preprocessing.spark import SparkJobError, local_scratch_dir, spark_stage
from preprocessing.spark_progress import ProgressReporter


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[Path]:
    """`path` cannot be written to while inside: chattr +i as root (root ignores permission bits), else 0555."""
    path.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0
    if as_root:
        subprocess.run(["chattr", "+i", str(path)], check=True)
    else:
        path.chmod(0o555)
    try:
        yield path
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        else:
            path.chmod(0o755)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_failed_write_is_one_line_with_the_root_cause_and_path(spark, tmp_path):
    with read_only(tmp_path / "ro") as ro, pytest.raises(SparkJobError) as caught:
        with spark_stage(spark, "some_stage"):
            with io.atomic_output(spark, io.qualify(spark, str(ro / "table"))) as tmp:
                spark.range(10).write.parquet(f"{tmp}/part")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("some_stage: ")
    assert f"{ro}/table" in message and ".tmp-" not in message, message  # the output, not its temporary
    assert "Mkdirs failed" in message or "Permission denied" in message or "read-only" in message.lower()
    assert "Py4J" in type(caught.value.__cause__).__name__ or "pyspark" in type(caught.value.__cause__).__module__


def test_other_errors_pass_through(spark):
    with pytest.raises(ValueError, match="a data rule"), spark_stage(spark, "stage"):
        raise ValueError("a data rule")


def test_progress_lines_while_a_job_runs(spark):
    import time

    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType

    @F.udf(LongType())
    def slow(x):
        time.sleep(0.5)
        return x

    stream = textio.StringIO()
    reporter = ProgressReporter(spark, "demo", interval=0.3, stream=stream)
    reporter.start()
    try:
        spark.range(0, 4, numPartitions=2).select(slow("id")).collect()
    finally:
        reporter.stop()
    lines = stream.getvalue().splitlines()
    assert any(line.startswith("demo: spark job") and "tasks done" in line for line in lines), lines


def test_sweep_deletes_killed_writers_temporaries_and_restores_a_moved_output(spark, tmp_path):
    import socket

    host = socket.gethostname().replace("-", "_")
    pid = dead_pid()
    killed = tmp_path / f".timeline.tmp-{pid}@{host}-0123456789ab" / "_parts" / "_temporary" / "0"
    killed.mkdir(parents=True)
    (killed / "part-0.parquet").write_bytes(b"x")
    legacy = tmp_path / ".timeline.tmp-0123456789ab"  # written before temporaries named their owner
    legacy.mkdir()
    live = tmp_path / f".timeline.tmp-{os.getpid()}@{host}-0123456789ab"
    live.mkdir()
    moved = tmp_path / f".timeline.old-{pid}@{host}-0123456789ab"  # killed between its two renames
    moved.mkdir()
    (moved / "_manifest.json").write_text("{}")
    io.sweep_temporaries(spark, io.qualify(spark, str(tmp_path / "timeline")))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "timeline"])
    assert (tmp_path / "timeline" / "_manifest.json").exists()


def test_scratch_dirs_of_dead_processes_are_swept(tmp_path):
    import socket

    host = socket.gethostname().replace("-", "_")
    dead = tmp_path / f"reagent_recsys-spark-{host}-{dead_pid()}" / "blockmgr-1234"
    dead.mkdir(parents=True)
    mine = local_scratch_dir(str(tmp_path))
    assert mine.name.endswith(f"-{os.getpid()}") and mine.exists()
    assert not dead.parent.exists()


def test_user_java_options_are_added_to_ours(spark):
    from tests.conftest import TEST_JAVA_OPTIONS

    jvm_args = list(spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert set(TEST_JAVA_OPTIONS.split()) <= set(jvm_args), jvm_args  # the session fixture's options, in force
    assert any(arg.startswith("-Dlog4j.configurationFile=") for arg in jvm_args)  # and ours, kept
    assert any(arg.startswith("-Djava.io.tmpdir=") and "reagent_recsys-spark-" in arg for arg in jvm_args)
