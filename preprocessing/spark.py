"""The one place a SparkSession is built (job shells and tests call this; pure functions never do)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from reagent_recsys.config import SparkConfig

LOG4J_CONFIG = Path(__file__).with_name("log4j2.properties")


def spark_environment() -> None:
    """Make Python workers use this interpreter and keep Spark on the loopback interface unless told otherwise."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


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
    settings = {
        "spark.sql.shuffle.partitions": str(config.shuffle_partitions),
        "spark.driver.memory": config.driver_memory,
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Trap: the JVM never JIT-compiles a method over 8000 bytes of bytecode, and whole-stage codegen fuses a
        # wide projection (the dense training table: ~130 expressions) into one such method, which then runs
        # interpreted: measured 32 -> 5 CPU-s per million rows. With this limit Spark splits such stages.
        "spark.sql.codegen.hugeMethodLimit": "8000",
        "spark.driver.extraJavaOptions": f"-Dlog4j.configurationFile={LOG4J_CONFIG.as_uri()}",
        **config.conf,
    }
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
