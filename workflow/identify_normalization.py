"""workflow.identify_normalization: the timeline's train split -> `<output_dir>/normalization.json` (Spark)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from typing import Any

from reagent_recsys.config import PipelineConfig
from reagent_recsys.schema import FEATURES_FILE, MANIFEST_FILE, TIMELINE

logger = logging.getLogger("reagent_recsys.normalization")


def text_sha256(text: str | None) -> str | None:
    """A short content hash recorded in manifests to tie an artifact to its inputs (None when absent)."""
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()[:16]


def feature_names(features_json: str | None) -> dict[int, str]:
    """Feature id -> name from a `_features.json` ({"features": [{"id", "name", ...}]})."""
    if features_json is None:
        return {}
    try:
        return {int(f["id"]): str(f["name"]) for f in json.loads(features_json).get("features", [])}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("%s: unreadable (%s); features stay unnamed", FEATURES_FILE, exc)
        return {}


def normalization_path(config: PipelineConfig) -> str:
    return config.output_uri("normalization.json")


def identify_normalization(config: PipelineConfig) -> dict[str, Any]:
    """Compute per-feature statistics of timeline/train, identify types and write normalization.json."""
    from preprocessing.spark import get_spark, spark_stage
    from preprocessing.timeline_job import timeline_paths

    spark = get_spark(config.spark)
    with spark_stage(spark, "identify_normalization"):
        return _identify(spark, config, timeline_paths(config))


def _identify(spark, config: PipelineConfig, paths: tuple[str, str]) -> dict[str, Any]:
    from preprocessing import io
    from preprocessing.normalization import compute_feature_statistics
    from reagent_recsys.normalization import identify_normalization as identify

    mdp_path, timeline_path = paths
    train = io.read_parquet_table(spark, io.qualify(spark, f"{timeline_path}/train"))
    TIMELINE.check_spark(train.schema)
    statistics = compute_feature_statistics(train, config.normalization, seed=config.seed)
    inputs = {
        "timeline": io.qualify(spark, timeline_path),
        "timeline_manifest_sha256": text_sha256(io.read_text(spark, f"{timeline_path}/{MANIFEST_FILE}")),
        "config_hash": config.section_hash("normalization"),
        "normalization": config.normalization.model_dump(mode="json"),
    }
    names = feature_names(io.read_text(spark, f"{timeline_path}/{FEATURES_FILE}")  # it adds history features
                          or io.read_text(spark, f"{mdp_path}/{FEATURES_FILE}"))
    artifact = identify(statistics, config.normalization, names=names, inputs=inputs)
    path = normalization_path(config)
    artifact.save(path)
    types = Counter(artifact.parameters[f].feature_type for f in artifact.feature_ids)
    return {"output": path, "features": len(artifact.feature_ids), "output_dim": artifact.output_dim,
            "types": dict(sorted(types.items()))}
