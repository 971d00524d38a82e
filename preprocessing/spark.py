"""The one place a SparkSession is built (job shells and tests call this; pure functions never do), and the
wrapper the Spark stages run in (`spark_stage`: progress on stderr, one-line errors)."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from preprocessing.spark_errors import SparkJobError, describe_spark_error
from preprocessing.spark_progress import ProgressReporter
from reagent_recsys.artifacts import pid_alive
from reagent_recsys.config import SparkConfig

LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")
LOCAL_DIR_PREFIX = "reagent_recsys-spark-"

__all__ = ["SparkJobError", "describe_spark_error", "get_spark", "spark_stage"]


def spark_environment() -> None:
    """Make Python workers use this interpreter and keep Spark on the loopback interface unless told otherwise."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def local_scratch_dir(root: str | None = None) -> Path:
    """This process's scratch directory for a local Spark (spark.local.dir and the JVM's java.io.tmpdir:
    blockmgr-*, spark-*, pyspark-*), `<tmp>/reagent_recsys-spark-<host>-<pid>`.

    A JVM killed with SIGKILL never deletes its blockmgr-*/spark-* directories; the scratch directories of
    processes of this host that are gone are deleted here, and this one at exit.
    """
    base = Path(root or tempfile.gettempdir())
    host = socket.gethostname().replace("-", "_")
    for stale in base.glob(f"{LOCAL_DIR_PREFIX}{host}-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    mine = base / f"{LOCAL_DIR_PREFIX}{host}-{os.getpid()}"
    mine.mkdir(parents=True, exist_ok=True)
    atexit.register(shutil.rmtree, mine, ignore_errors=True)
    return mine


def get_spark(config: SparkConfig | None = None, master: str | None = None):
    """A SparkSession for `config` (master overridden by `master`, e.g. from the command line).

    Under spark-submit the master comes from spark-submit itself and is not overridden here.
    """
    spark_environment()
    from pyspark.sql import SparkSession

    config = config or SparkConfig()
    builder = SparkSession.builder.appName(config.app_name)
    # spark-submit starts this Python with a gateway to its own JVM, whose master must be kept.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ
    if master or not submitted:
        builder = builder.master(master or config.master)
    java_options = f"-Dlog4j.configurationFile={LOG4J_CONFIG.as_uri()}"
    scratch = {}
    if not submitted and (master or config.master).startswith("local") and "spark.local.dir" not in config.conf:
        local_dir = local_scratch_dir()
        scratch = {"spark.local.dir": str(local_dir)}
        java_options += f" -Djava.io.tmpdir={local_dir}"
    settings = {
        "spark.sql.shuffle.partitions": str(config.shuffle_partitions),
        "spark.driver.memory": config.driver_memory,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",  # spark_stage reports progress instead
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Trap: the JVM never JIT-compiles a method over 8000 bytes of bytecode, and whole-stage codegen fuses a
        # wide projection (the dense training table: ~130 expressions) into one such method, which then runs
        # interpreted: measured 32 -> 5 CPU-s per million rows. With this limit Spark splits such stages.
        "spark.sql.codegen.hugeMethodLimit": "8000",
        **scratch,
        **config.conf,
        # the user's JVM options (e.g. -XX:TieredStopAtLevel=1 for short test runs) go after ours, not instead
        "spark.driver.extraJavaOptions": " ".join(
            filter(None, [java_options, config.conf.get("spark.driver.extraJavaOptions", "").strip()])),
    }
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


@contextlib.contextmanager
def spark_stage(spark, name: str, interval: float | None = None) -> Iterator[None]:
    """Run a Spark stage's body with progress lines on stderr (`name: spark job 2 stage 3: 5/8 tasks ...` every
    `interval` s (default: $REAGENT_RECSYS_PROGRESS_SECONDS or 5) while Spark works, a heartbeat while the
    driver works) and one-line errors: a Py4J/Spark failure becomes SparkJobError("name: <root cause> (path)"),
    the original chained as its __cause__."""
    if interval is None:
        interval = float(os.environ.get("REAGENT_RECSYS_PROGRESS_SECONDS", "5"))
    reporter = ProgressReporter(spark, name, interval)
    reporter.start()
    try:
        yield
    except Exception as exc:
        line = describe_spark_error(exc)
        if line is None:
            raise
        raise SparkJobError(f"{name}: {line}") from exc
    finally:
        reporter.stop()


def job_main(argv: list[str] | None, description: str, stage: str, run: Callable[[Any, Any], dict[str, Any]],
             example: str, check: Callable[[Any], Any] = lambda config: None) -> int:
    """The command line of a Spark job file (`spark-submit preprocessing/<job>.py CONFIG [--master] [--set]`):
    config errors exit 2, data rules and Spark failures 1, each in one line; the summary goes to stdout as JSON."""
    import argparse
    import json
    import logging

    from reagent_recsys.config import ConfigError, load_config

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", help="The run's YAML config.")
    parser.add_argument("--master", help="Spark master URL (overrides spark.master and spark-submit's).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"Override a config field, e.g. --set {example}.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("reagent_recsys").setLevel(logging.INFO)
    try:
        config = load_config(args.config, args.overrides)
        check(config)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    spark = get_spark(config.spark, master=args.master)
    try:
        with spark_stage(spark, stage):
            summary = run(spark, config)
    except (ValueError, SparkJobError) as exc:  # a data rule, a schema, a Spark failure: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    return 0

