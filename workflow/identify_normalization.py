"""workflow.identify_normalization: the timeline's train split -> `<output_dir>/normalization.json` (Spark)."""

from __future__ import annotations

from typing import Any

from reagent_recsys.config import PipelineConfig


def identify_normalization(config: PipelineConfig) -> dict[str, Any]:
    """Compute per-feature statistics of timeline/train, identify types and write normalization.json."""
    from preprocessing.normalization_job import run_identify_normalization
    from preprocessing.spark import get_spark, spark_stage

    spark = get_spark(config.spark)
    with spark_stage(spark, "identify_normalization"):
        return run_identify_normalization(spark, config)
