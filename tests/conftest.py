"""Shared fixtures: one local[2] Spark session for the whole test run (started only by tests that ask)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def spark():
    from preprocessing.spark import get_spark
    from reagent_recsys.config import SparkConfig

    session = get_spark(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="1g"))
    yield session
    session.stop()
