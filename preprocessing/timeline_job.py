#!/usr/bin/env python3
"""The timeline job: mdp table -> <output>/timeline/{train,eval}[, rejects] and _manifest.json, written atomically.

    spark-submit preprocessing/timeline_job.py CONFIG.yaml [--master URL] [--set key=value ...]

Under spark-submit the master comes from spark-submit (or --master here); run with plain python it comes from
`spark.master` of the config. workflow.timeline_operator calls `run_timeline` with its own session.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__" and str(ROOT) not in sys.path:  # spark-submit runs this file by path
    sys.path.insert(0, str(ROOT))

from preprocessing import io  # noqa: E402
from preprocessing.timeline import (  # noqa: E402
    FILTERS,
    QUARANTINED,
    REASON,
    RULES,
    SPLIT,
    SPLITS,
    DataValidationError,
    annotate_reasons,
    build_timeline,
    describe_invalid,
    episode_histogram,
    filter_ds,
    length_threshold,
    mark_quarantine,
    quarantined_episodes,
    split_counts,
    split_ranges,
)
from reagent_recsys import history  # noqa: E402
from reagent_recsys.artifacts import package_versions, text_sha256  # noqa: E402
from reagent_recsys.config import ConfigError, PipelineConfig  # noqa: E402
from reagent_recsys.schema import FEATURES_FILE, MANIFEST_FILE, MDP, TIMELINE  # noqa: E402

logger = logging.getLogger("reagent_recsys.timeline")

def _input_manifest(spark, input_path: str) -> dict[str, Any]:
    text = io.read_text(spark, f"{input_path}/{MANIFEST_FILE}")
    if text is None:
        return {}
    try:
        config_hash = json.loads(text).get("config_hash")
    except (ValueError, AttributeError):
        config_hash = None
    return {"manifest_sha256": text_sha256(text), "config_hash": config_hash}


def read_description(spark, input_path: str) -> dict[str, Any] | None:
    """The mdp table's `_features.json`, or None when it has none (a logs run may have no description)."""
    text = io.read_text(spark, f"{input_path}/{FEATURES_FILE}")
    if text is None:
        return None
    try:
        description = json.loads(text)
    except ValueError as exc:
        raise DataValidationError(f"rule features_json: {input_path}/{FEATURES_FILE} is not valid JSON ({exc})") \
            from None
    return description if isinstance(description, dict) else None


def history_plan(config: PipelineConfig, description: dict[str, Any] | None, raw) -> tuple[history.HistorySpec,
                                                                                           list[int]] | None:
    """(spec, feature ids) of `timeline.history`, or None when unset. The ids follow the logs' own feature ids
    (from the description, else the largest id in the data); `action.*` expands from the description's action
    values, else from the actions in the data. A source the logs do not describe is a ConfigError naming
    timeline.history.<field>."""
    from pyspark.sql import functions as F

    cfg = config.timeline.history
    if cfg is None:
        return None
    action_values = [str(a) for a in ((description or {}).get("action") or {}).get("values", [])]
    if not action_values and "action.*" in (*cfg.sums, *cfg.counts, *cfg.since):
        from preprocessing.training_table import sort_action_names

        action_values = sort_action_names({r.action for r in raw.select("action").distinct().collect()
                                           if r.action is not None})
    try:
        spec = history.build_spec(cfg, description, action_values)
    except history.HistorySpecError as exc:
        raise ConfigError(str(exc)) from None
    taken = history.logged_feature_ids(description)
    if description is None:
        top = raw.select(F.max(F.array_max(F.map_keys("state_features"))).alias("top")).first()["top"]
        taken = [] if top is None else [int(top)]
    return spec, history.assign_ids(spec, taken)


def _write_splits(spark, timeline, out: str) -> None:
    """One pass writes both splits (partitioned by split), then each partition directory is renamed into place."""
    parts = f"{out}/_parts"
    timeline.write.partitionBy(SPLIT).parquet(parts)
    for split in SPLITS:
        if io.exists(spark, f"{parts}/{SPLIT}={split}"):
            io.rename(spark, f"{parts}/{SPLIT}={split}", f"{out}/{split}")
        else:  # an empty split is still a readable table with the declared schema
            spark.createDataFrame([], TIMELINE.spark()).write.parquet(f"{out}/{split}")
    io.delete(spark, parts)


def _quarantine_summary(mode: str, marked, counts: dict, dropped: dict) -> dict[str, Any]:
    """Which episodes were quarantined and how many rows each way (timeline.on_invalid: quarantine)."""
    episodes = sum(counts[s]["episodes_quarantined"] for s in SPLITS)
    return {
        "mode": mode,
        "episodes": episodes,
        "example_mdp_ids": quarantined_episodes(marked),
        "rows_invalid": sum(dropped[r.name] for r in RULES),
        "rows_dropped_with_episode": dropped[QUARANTINED],
        "rows_cut_tail": dropped["quarantine_cut_tail"],
    }


def write_manifest(spark, out: str, manifest: dict[str, Any]) -> None:
    io.write_json(spark, f"{out}/{MANIFEST_FILE}", manifest)


def run_timeline(spark, config: PipelineConfig) -> dict[str, Any]:
    """Validate the mdp table, build the timeline and write it; returns a summary of the manifest.

    Raises SchemaError (missing column / wrong type) or DataValidationError (a broken rule, an empty input)
    before anything is written.
    """
    from pyspark.sql import functions as F

    tl = config.timeline
    input_path, output_path = config.paths.mdp_input, config.paths.timeline_output
    input_uri, output_uri = io.qualify(spark, input_path), io.qualify(spark, output_path)
    raw = io.read_parquet_table(spark, input_uri)
    MDP.check_spark(raw.schema)
    description = read_description(spark, input_uri)
    plan = history_plan(config, description, raw)  # config errors before any pass over the data
    annotated = annotate_reasons(filter_ds(raw.select(*MDP.names), tl.ds_start, tl.ds_end))
    marked = mark_quarantine(annotated, tl.quarantine)

    eval_from = tl.eval_from if tl.split == "time" else None
    histogram = [row.asDict() for row in episode_histogram(
        marked, tl.eval_fraction, tl.time_window, tl.multi_steps, eval_from).collect()]
    rows_in = sum(h["rows"] for h in histogram)
    if rows_in == 0:
        bounds = f" within ds [{tl.ds_start or '-inf'}, {tl.ds_end or '+inf'}]" if tl.ds_start or tl.ds_end else ""
        raise DataValidationError(f"rule empty_input: input table {input_path} has 0 rows{bounds}")
    invalid = {r.name: sum(h[r.name] for h in histogram) for r in RULES}
    if any(invalid.values()) and tl.on_invalid == "fail":
        raise DataValidationError(
            f"mdp table {input_path}: {describe_invalid(annotated, invalid)} "
            "(timeline.on_invalid: quarantine writes such rows to timeline/rejects and goes on)"
        )
    threshold = length_threshold(histogram, tl.outlier_episode_length_percentile)
    counts = split_counts(histogram, threshold)

    valid = marked.where(F.col("_kept")).select(*MDP.names, "_cut")
    if plan is not None:  # over the kept steps of each episode, before the n-step lead: next states carry them
        spec, ids = plan
        valid = history.spark_history(valid, spec, description, ids)
    timeline = build_timeline(
        valid,
        multi_steps=tl.multi_steps,
        gamma=tl.gamma,
        eval_fraction=tl.eval_fraction,
        max_episode_length=threshold,
        time_window=tl.time_window,
        eval_from=eval_from,
    )
    with io.atomic_output(spark, output_uri) as out:
        _write_splits(spark, timeline, out)
        if tl.on_invalid == "quarantine":  # every row not in a transition: invalid, or dropped with its episode
            marked.where(~F.col("_kept")).withColumn(REASON, F.coalesce(F.col(REASON), F.lit(QUARANTINED))).drop(
                "_kept", "_cut", "_bad_episode").write.parquet(f"{out}/rejects")
        for split in SPLITS:  # the counts were derived from the histogram; check them against what was written
            written = spark.read.parquet(f"{out}/{split}").count()
            if written != counts[split]["rows_out"]:
                raise RuntimeError(f"timeline/{split}: wrote {written} rows, expected {counts[split]['rows_out']}")
        dropped = {reason: sum(counts[s]["rows_dropped"][reason] for s in SPLITS) for reason in (
            *(r.name for r in RULES), *FILTERS)}
        manifest = {
            "table": TIMELINE.name,
            "columns": TIMELINE.names,
            "seed": config.seed,
            "config_hash": config.section_hash("timeline"),
            "timeline": tl.model_dump(mode="json"),
            "input": {"path": input_uri, **_input_manifest(spark, input_uri)},
            "outlier_episode_length_threshold": threshold,
            "rows_in": rows_in,
            "rows_out": {s: counts[s]["rows_out"] for s in SPLITS},
            "rows_dropped": dropped,
            "splits": counts,
            "quarantine": _quarantine_summary(tl.quarantine, marked, counts, dropped) if any(invalid.values())
            else None,
            "split": {"method": tl.split, "eval_from": eval_from, "ds_range": split_ranges(histogram),
                      "rows_out": {s: counts[s]["rows_out"] for s in SPLITS}},
            "history": history.spec_to_dict(*plan) if plan is not None else None,
            "package_versions": package_versions(),
        }
        if plan is not None or description is not None:  # what the features of this table mean
            io.write_json(spark, f"{out}/{FEATURES_FILE}", history.describe(description, *plan) if plan is not None
                          else description)
        write_manifest(spark, out, manifest)
    for reason, n in dropped.items():
        if n:
            logger.warning("timeline: dropped %d of %d rows (%s)", n, rows_in, reason)
    if manifest["quarantine"]:
        q = manifest["quarantine"]
        logger.warning("timeline: quarantined %d episodes (%s; e.g. %s): rows in timeline/rejects",
                       q["episodes"], q["mode"], q["example_mdp_ids"][:3])
    return {
        "output": output_uri,
        "rows_in": rows_in,
        "rows_out": manifest["rows_out"],
        "rows_dropped": {k: v for k, v in dropped.items() if v},
        "outlier_episode_length_threshold": threshold,
        **({"quarantined_episodes": manifest["quarantine"]["episodes"]} if manifest["quarantine"] else {}),
    }


def main(argv: list[str] | None = None) -> int:
    from preprocessing.spark import job_main

    return job_main(argv, __doc__.splitlines()[0], "timeline", run_timeline, "timeline.multi_steps=3")


if __name__ == "__main__":
    sys.exit(main())
