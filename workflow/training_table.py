"""workflow.training_table: timeline/{train,eval} + normalization.json -> `<output_dir>/training_table/` (Spark)."""

from __future__ import annotations

from typing import Any

from reagent_recsys.config import PipelineConfig


def training_table(config: PipelineConfig) -> dict[str, Any]:
    """Densify both timeline splits in the artifact's feature order; write them and `_manifest.json` atomically."""
    from preprocessing.spark import get_spark, spark_stage
    from preprocessing.training_table_job import run_training_table

    spark = get_spark(config.spark)
    with spark_stage(spark, "training_table"):
        return run_training_table(spark, config)
