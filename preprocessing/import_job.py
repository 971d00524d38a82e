#!/usr/bin/env python3
"""The import job: your decision logs (CSV, JSON lines, Parquet) or RLlib offline JSON -> the mdp table
(`ds` partitions, `_features.json`, `_manifest.json`, and `_rejects` when quarantining), written atomically.

    spark-submit preprocessing/import_job.py CONFIG.yaml [--master URL] [--set key=value ...]

Under spark-submit the master comes from spark-submit (or --master here); run with plain python it comes from
`spark.master` of the config. workflow.import_logs calls `run_import` with its own session.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__" and str(ROOT) not in sys.path:  # spark-submit runs this file by path
    sys.path.insert(0, str(ROOT))

from preprocessing import io  # noqa: E402
from preprocessing.import_logs import (  # noqa: E402
    REASON,
    FeaturePlan,
    annotate_reasons,
    check_columns,
    describe_invalid,
    distinct_values,
    plan_features,
    standardize,
    to_mdp,
)
from preprocessing.import_rllib import (  # noqa: E402
    RLLIB_REQUIRED,
    rllib_as_columns,
    rllib_decisions,
    rllib_import_config,
    rllib_ragged_lines,
)
from preprocessing.timeline import DataValidationError  # noqa: E402
from preprocessing.training_table import sort_action_names  # noqa: E402
from reagent_recsys.artifacts import package_versions  # noqa: E402
from reagent_recsys.config import ConfigError, ImportConfig, PipelineConfig  # noqa: E402
from reagent_recsys.schema import FEATURES_FILE, MANIFEST_FILE, MDP  # noqa: E402

logger = logging.getLogger("reagent_recsys.import")
REJECTS = "_rejects"  # inside the mdp table; '_' keeps it out of the table for Spark and pyarrow readers


def import_paths(config: PipelineConfig) -> tuple[str, str]:
    """(input logs, output mdp table) of a run."""
    if config.import_ is None:
        raise ConfigError("import: workflow.import_logs needs an `import` section (the logs to read)")
    return config.import_.path, config.paths.import_output


def read_input(spark, path: str, fmt: str):
    """The raw log as a DataFrame (CSV: every column a string; JSON: types inferred)."""
    from pyspark.errors import AnalysisException

    reader = spark.read
    try:
        if fmt == "csv":
            return reader.option("header", True).option("mode", "PERMISSIVE").csv(path)
        if fmt in ("jsonl", "rllib"):
            return reader.option("mode", "PERMISSIVE").json(path)
        return reader.parquet(path)
    except AnalysisException as exc:
        text = str(exc)
        if "PATH_NOT_FOUND" in text:
            raise DataValidationError(f"input {path}: path does not exist") from None
        if "UNABLE_TO_INFER_SCHEMA" in text:
            raise DataValidationError(f"rule empty_input: input {path} has no rows") from None
        raise


def _check_not_empty(raw, path: str, count: bool = True) -> None:
    """Raise for an input without columns (or, with `count`, without rows) or with lines that are not JSON."""
    columns = [c for c in raw.columns if c != "_corrupt_record"]
    if not columns or (count and raw.limit(1).count() == 0):
        raise DataValidationError(f"rule empty_input: input {path} has no rows")
    if "_corrupt_record" in raw.columns:
        from pyspark.sql import functions as F

        bad = raw.where(F.col("_corrupt_record").isNotNull())
        count = bad.count()
        if count:
            examples = [r["_corrupt_record"][:80] for r in bad.limit(3).collect()]
            raise DataValidationError(f"rule unparseable_line: input {path}: {count} lines are not JSON objects, "
                                      f"e.g. {examples}")


def read_items(spark, cfg: ImportConfig) -> dict[str, list[float | None]]:
    """The item side table as {item id: [feature values]} (validated: columns, numbers, unique ids)."""
    from pyspark.sql import functions as F

    from preprocessing.import_logs import _number

    items_cfg = cfg.items
    if items_cfg is None:
        raise ConfigError("import.items: no item table configured")
    fmt = items_cfg.format or ("jsonl" if cfg.format == "rllib" else cfg.format)
    raw = read_input(spark, items_cfg.path, fmt)
    _check_not_empty(raw, items_cfg.path)
    wanted = {items_cfg.id_column: "import.items.id_column",
              **{c: f"import.items.features[{i}]" for i, c in enumerate(items_cfg.features)}}
    missing = [f"{c!r} ({w})" for c, w in wanted.items() if c not in raw.columns]
    if missing:
        raise DataValidationError(f"rule missing_column: item table {items_cfg.path}: {', '.join(missing)} not in "
                                  f"its columns {sorted(raw.columns)[:20]}")
    parsed = [_number(raw, c) for c in items_cfg.features]
    table = raw.select(F.trim(F.col(f"`{items_cfg.id_column}`").cast("string")).alias("id"),
                       *[v.alias(f"v{d}") for d, (v, _) in enumerate(parsed)],
                       *[b.alias(f"b{d}") for d, (_, b) in enumerate(parsed)]).collect()
    for d, column in enumerate(items_cfg.features):
        bad = [r for r in table if r[f"b{d}"]]
        if bad:
            raise DataValidationError(
                f"rule non_numeric_value: item table column {column} is not a number in {len(bad)} rows, e.g. "
                + ", ".join(f"({items_cfg.id_column}={r['id']!r})" for r in bad[:3]))
    ids = [r["id"] for r in table]
    duplicated = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if duplicated or None in ids:
        raise DataValidationError(f"rule duplicate_item: item table column {items_cfg.id_column}: "
                                  f"{len(duplicated)} ids appear more than once (or are null), e.g. {duplicated[:3]}")
    return {r["id"]: [r[f"v{d}"] for d in range(len(items_cfg.features))] for r in table}


def features_description(cfg: ImportConfig, plan: FeaturePlan, vocabularies: dict[str, list[str]],
                         rllib: bool) -> dict[str, Any]:
    """The `_features.json` payload: every state feature id's name and kind, the actions, the vocabularies."""
    encodings = {}
    for column in cfg.categorical_features:
        if cfg.categorical_encoding == "one_hot":
            encodings[column] = {"encoding": "one_hot", "values": vocabularies.get(column, [])}
        else:
            encodings[column] = {"encoding": "hash", "buckets": cfg.hash_buckets,
                                 "hash": "pmod(xxhash64(column name, value), buckets) (Spark)",
                                 "observed_buckets": len(vocabularies.get(column, []))}
    return {
        "features": plan.descriptions,
        "action": {
            "meaning": "the discrete action index of the RLlib logs" if rllib else
            f"the item chosen (column {cfg.action_column}); `slot` of an item feature is the item's index here",
            "values": plan.action_names,
        },
        "reward": f"column {cfg.reward_column} of the log",
        "metrics": {c: f"column {c} of the log" for c in cfg.metric_columns},
        "categorical": encodings,
        "source": {"path": cfg.path, "format": cfg.format},
    }


def run_import(spark, config: PipelineConfig) -> dict[str, Any]:
    """Read and validate the logs, build the mdp table and write it atomically; returns a summary.

    Raises DataValidationError (a missing column, a broken rule, an empty input) before anything is written.
    """
    from pyspark.sql import functions as F

    input_path, output_path = import_paths(config)
    cfg = config.import_
    if cfg is None:  # import_paths has raised already; this is for the type checker
        raise ConfigError("import: missing")
    rllib = cfg.format == "rllib"
    raw = read_input(spark, input_path, cfg.format)
    _check_not_empty(raw, input_path, count=False)  # the reason counts below find an input without rows
    all_actions: list[str] | None = None
    if rllib:
        rows = rllib_decisions(raw)
        ragged = rllib_ragged_lines(raw).count()
        if ragged:
            raise DataValidationError(f"rule ragged_batch: columns {'/'.join(RLLIB_REQUIRED)} are missing or of "
                                      f"unequal lengths in {ragged} SampleBatch lines of {input_path}")
        stats = rows.agg(F.max(F.size("obs")).alias("width"), F.max(F.col("actions").cast("long")).alias("top"),
                         F.count(F.lit(1)).alias("rows")).first()
        if not stats["rows"]:
            raise DataValidationError(f"rule empty_input: input {input_path} has no steps")
        width = int(stats["width"] or 0)
        raw = rllib_as_columns(rows, width)
        cfg = rllib_import_config(cfg, width)
        num_actions = cfg.rllib_num_actions or int(stats["top"] or 0) + 1
        all_actions = [str(a) for a in range(num_actions)]
    check_columns(raw.columns, cfg, input_path)

    annotated = annotate_reasons(standardize(raw, cfg), cfg).persist()
    try:
        counts = {r[REASON]: r["count"] for r in annotated.groupBy(REASON).count().collect()}
        rows_in = sum(counts.values())
        if rows_in == 0:
            raise DataValidationError(f"rule empty_input: input {input_path} has no rows")
        invalid = {k: v for k, v in counts.items() if k is not None}
        if invalid and cfg.on_invalid == "fail":
            raise DataValidationError(
                f"decision log {input_path}: {describe_invalid(annotated, invalid, cfg)} "
                "(import.on_invalid: quarantine writes such rows to <mdp>/_rejects and goes on)")
        rows_valid = counts.get(None, 0)
        if rows_valid == 0:
            raise DataValidationError(f"rule empty_input: input {input_path}: none of its {rows_in} rows is valid")
        valid = annotated.where(F.col(REASON).isNull())

        seen = distinct_values(valid, cfg).first()
        vocabularies = {column: sorted(seen[f"cat_{j}"]) for j, column in enumerate(cfg.categorical_features)}
        items = read_items(spark, cfg) if cfg.items is not None else None
        if all_actions is None:
            names = set(seen["actions"]) | set(seen["candidates"] if cfg.candidates_column else [])
            if not cfg.candidates_column and items is not None:
                names |= set(items)
            all_actions = sort_action_names(names)
        plan = plan_features(cfg, vocabularies, all_actions, items)
        mdp = to_mdp(valid, cfg, plan, items, cfg.ds)
        MDP.check_spark(mdp.schema, allow_extra=False)

        output_uri = io.qualify(spark, output_path)
        with io.atomic_output(spark, output_uri) as tmp:
            # One task per ds, rows sorted: the same logs give the same files.
            (mdp.repartition("ds").sortWithinPartitions("ds", "mdp_id", "sequence_number")
             .write.partitionBy("ds").parquet(tmp))
            if invalid:
                raw_columns = [f"`{c}`" for c in raw.columns]
                annotated.where(F.col(REASON).isNotNull()).select(*raw_columns, REASON).write.parquet(
                    f"{tmp}/{REJECTS}")
            written = io.read_parquet_table(spark, tmp)
            summary_rows = written.agg(F.count(F.lit(1)).alias("rows"), F.countDistinct("mdp_id").alias("episodes"),
                                       F.collect_set("ds").alias("ds")).first()
            if summary_rows["rows"] != rows_valid:
                raise RuntimeError(f"mdp: wrote {summary_rows['rows']} rows, expected {rows_valid}")
            ds_values = sorted(summary_rows["ds"])
            io.write_json(spark, f"{tmp}/{FEATURES_FILE}",
                          features_description(cfg, plan, vocabularies, rllib))
            summary = {
                "table": "mdp",
                "path": output_uri,
                "rows": rows_valid,
                "episodes": summary_rows["episodes"],
                "rows_in": rows_in,
                "rows_rejected": invalid,
                "ds": ds_values,
                "features": len(plan.descriptions),
                "actions": len(plan.action_names),
                "seed": config.seed,
                "config_hash": config.section_hash("import_"),
            }
            io.write_json(spark, f"{tmp}/{MANIFEST_FILE}", {
                **summary, "input": {"path": input_path, "format": cfg.format},
                "config": config.model_dump(mode="json"), "package_versions": package_versions(),
            })
    finally:
        annotated.unpersist()
    for reason, n in invalid.items():
        logger.warning("import: quarantined %d of %d rows (%s)", n, rows_in, reason)
    return summary


def main(argv: list[str] | None = None) -> int:
    from preprocessing.spark import job_main

    return job_main(argv, __doc__.splitlines()[0], "import", run_import, "import.path=hdfs://nn/logs", check=import_paths)


if __name__ == "__main__":
    sys.exit(main())
