"""Shared fixtures: one local[2] Spark session for the whole test run (started only by tests that ask)."""

from __future__ import annotations

import pytest

# Test JVMs live for seconds on tiny tables: the C1 JIT alone and the serial collector halve their CPU time
# (JVM start and the first job of each stage are mostly compilation). Production keeps the JVM's defaults.
TEST_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
TEST_SPARK = {"master": "local[2]", "shuffle_partitions": 4, "driver_memory": "1g",
              "conf": {"spark.driver.extraJavaOptions": TEST_JAVA_OPTIONS}}


@pytest.fixture(scope="session")
def spark():
    from preprocessing.spark import get_spark
    from reagent_recsys.config import SparkConfig

    session = get_spark(SparkConfig(**TEST_SPARK))
    yield session
    session.stop()
