"""The identify_normalization job: the timeline's train split -> `<output_dir>/normalization.json`.

workflow.identify_normalization calls `run_identify_normalization` with its own session.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

from preprocessing import io
from preprocessing.normalization import compute_feature_statistics
from reagent_recsys.artifacts import text_sha256
from reagent_recsys.config import PipelineConfig
from reagent_recsys.normalization import identify_normalization
from reagent_recsys.schema import FEATURES_FILE, MANIFEST_FILE, TIMELINE

logger = logging.getLogger("reagent_recsys.normalization")


def feature_names(features_json: str | None) -> dict[int, str]:
    """Feature id -> name from a `_features.json` ({"features": [{"id", "name", ...}]})."""
    if features_json is None:
        return {}
    try:
        return {int(f["id"]): str(f["name"]) for f in json.loads(features_json).get("features", [])}
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        logger.warning("%s: unreadable (%s); features stay unnamed", FEATURES_FILE, exc)
        return {}


def run_identify_normalization(spark, config: PipelineConfig) -> dict[str, Any]:
    """Compute per-feature statistics of timeline/train, identify types and write normalization.json."""
    paths = config.paths
    timeline_path = paths.timeline_output
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
                          or io.read_text(spark, f"{paths.mdp_input}/{FEATURES_FILE}"))
    artifact = identify_normalization(statistics, config.normalization, names=names, inputs=inputs)
    path = paths.uri(paths.NORMALIZATION)
    artifact.save(path)
    types = Counter(artifact.parameters[f].feature_type for f in artifact.feature_ids)
    return {"output": path, "features": len(artifact.feature_ids), "output_dim": artifact.output_dim,
            "types": dict(sorted(types.items()))}
