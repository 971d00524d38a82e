"""workflow.import_logs: your decision logs (CSV, JSON lines, Parquet) or RLlib offline JSON -> the mdp table."""

from __future__ import annotations

from typing import Any

from reagent_recsys.config import PipelineConfig


def import_logs(config: PipelineConfig) -> dict[str, Any]:
    """Run the import job with the session of `config.spark`; returns the rows / episodes / rejects summary."""
    from preprocessing.import_job import import_paths, run_import
    from preprocessing.spark import get_spark

    import_paths(config)  # a config error before a session starts
    return run_import(get_spark(config.spark), config)
