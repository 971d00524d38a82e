"""workflow.timeline_operator: the mdp table -> the timeline table (train/eval transitions), with Spark."""

from __future__ import annotations

from typing import Any

from reagent_recsys.config import PipelineConfig


def timeline_operator(config: PipelineConfig) -> dict[str, Any]:
    """Run the timeline job with the session of `config.spark`; returns the rows in/out/dropped summary."""
    from preprocessing.spark import get_spark, spark_stage
    from preprocessing.timeline_job import run_timeline

    spark = get_spark(config.spark)
    with spark_stage(spark, "timeline_operator"):
        return run_timeline(spark, config)
