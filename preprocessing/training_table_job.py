"""The training_table job: timeline/{train,eval} + normalization.json -> `<output_dir>/training_table/`.

workflow.training_table calls `run_training_table` with its own session.
"""

from __future__ import annotations

from typing import Any

from preprocessing import io
from preprocessing.training_table import (
    build_training_table,
    by_key_range,
    check_actions,
    collect_action_names,
)
from reagent_recsys.artifacts import package_versions, text_sha256
from reagent_recsys.config import PipelineConfig
from reagent_recsys.normalization import NormalizationArtifact
from reagent_recsys.schema import MANIFEST_FILE, TIMELINE, TRAINING

SPLITS = ("train", "eval")


def run_training_table(spark, config: PipelineConfig) -> dict[str, Any]:
    """Densify both timeline splits in the artifact's feature order; write them and `_manifest.json` atomically."""
    paths = config.paths
    artifact_path = paths.uri(paths.NORMALIZATION)
    artifact = NormalizationArtifact.load(artifact_path)
    timeline_path = paths.timeline_output
    timelines = {}
    for split in SPLITS:
        df = io.read_parquet_table(spark, io.qualify(spark, f"{timeline_path}/{split}"))
        TIMELINE.check_spark(df.schema)
        timelines[split] = df
    action_names = config.training_table.action_names
    if action_names is None:
        action_names = collect_action_names(*timelines.values())
    else:
        for df in timelines.values():
            check_actions(df, action_names)

    output = io.qualify(spark, paths.uri(paths.TRAINING_TABLE))
    rows = {}
    with io.atomic_output(spark, output) as tmp:
        for split, df in timelines.items():
            table = build_training_table(df, artifact.feature_ids, action_names)
            # Sorted, in key ranges: the same files whatever ran before (same weights downstream), and enough
            # row groups for every process of a distributed training run to read its own shard.
            by_key_range(table, config.training_table.num_files).write.parquet(f"{tmp}/{split}")
            rows[split] = spark.read.parquet(f"{tmp}/{split}").count()
        manifest = {
            "table": TRAINING.name,
            "columns": TRAINING.names,
            "feature_ids": artifact.feature_ids,
            "action_names": action_names,
            "rows": rows,
            "seed": config.seed,
            "config_hash": config.section_hash("training_table"),
            "inputs": {
                "timeline": io.qualify(spark, timeline_path),
                "timeline_manifest_sha256": text_sha256(io.read_text(spark, f"{timeline_path}/{MANIFEST_FILE}")),
                "normalization": artifact_path,
                "normalization_sha256": text_sha256(io.read_text(spark, artifact_path)),
            },
            "package_versions": package_versions(),
        }
        io.write_json(spark, f"{tmp}/{MANIFEST_FILE}", manifest)
    return {"output": output, "rows": rows, "features": len(artifact.feature_ids), "actions": len(action_names)}
