"""The log importer's pure core: decision logs (or RLlib SampleBatch lines) -> validated rows of the mdp table.

Every function takes and returns DataFrames (or small driver-side plans); none builds a session or touches storage
(the job shell, preprocessing/import_job.py, reads and writes). Column expressions, joins and one window; no
Python per row.

The steps (the job runs them in this order):
  1. `preprocessing.import_rllib` (RLlib only): one row per step from the SampleBatch lines; `obs` becomes obs_0..obs_{k-1}.
  2. `standardize`: typed columns beside the raw ones: _mdp_id, _step, _ts, _action, _propensity, _reward,
     _metrics, _num_<i> (numeric context), _cat_<j> (categorical context), _candidates.
  3. `annotate_reasons`: `reason` = the first rule of `rules(cfg)` the row breaks (null when valid).
  4. `FeaturePlan` (driver side, from the vocabularies and the item table): every feature id with its name.
  5. `to_mdp`: valid rows -> the MDP columns (state_features holds the context and, per candidate, the item's
     features, as the simulator's per-candidate features).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from preprocessing.timeline import DataValidationError, Rule
from reagent_recsys.config import ImportConfig

REASON = "reason"


# ------------------------------------------------------------------------------------------------ rules
def rules(cfg: ImportConfig) -> tuple[Rule, ...]:
    """The row rules of this import, in the order a row is checked (the first broken one is its reason)."""
    order = "/".join(c for c in (cfg.step_column, cfg.timestamp_column) if c)
    key = cfg.step_column or cfg.timestamp_column
    return (
        Rule("null_required", f"{cfg.session_column}/{order}/{cfg.action_column}", "is null or empty"),
        Rule("non_numeric_value", "", "is not a number"),  # reason carries the column: non_numeric_value(col)
        Rule("unparseable_timestamp", cfg.timestamp_column or "", "cannot be parsed as a time"),
        Rule("propensity_out_of_range", cfg.propensity_column, "is missing, NaN or outside (0, 1]"),
        Rule("duplicate_step", f"({cfg.session_column}, {key})", "appears more than once"),
    )


def numeric_sources(cfg: ImportConfig) -> list[str]:
    """The input columns that must hold numbers (blank or null allowed except for the propensity and reward)."""
    cols = [cfg.reward_column, *cfg.metric_columns, *cfg.numeric_features]
    if cfg.position_column:
        cols.append(cfg.position_column)
    if cfg.step_column:
        cols.append(cfg.step_column)
    return list(dict.fromkeys(cols))


def required_columns(cfg: ImportConfig) -> dict[str, str]:
    """Input column -> the config field that names it (for the missing-column error)."""
    fields = {
        "session_column": cfg.session_column, "step_column": cfg.step_column,
        "timestamp_column": cfg.timestamp_column, "action_column": cfg.action_column,
        "propensity_column": cfg.propensity_column, "reward_column": cfg.reward_column,
        "position_column": cfg.position_column, "candidates_column": cfg.candidates_column,
    }
    out = {col: f"import.{name}" for name, col in fields.items() if col}
    for name in ("metric_columns", "numeric_features", "categorical_features"):
        for i, col in enumerate(getattr(cfg, name)):
            out.setdefault(col, f"import.{name}[{i}]")
    return out


def check_columns(columns: list[str], cfg: ImportConfig, path: str) -> None:
    """Raise DataValidationError naming every mapped column the input lacks."""
    missing = [(col, where) for col, where in required_columns(cfg).items() if col not in columns]
    if missing:
        names = ", ".join(f"{col!r} ({where})" for col, where in missing)
        raise DataValidationError(
            f"rule missing_column: {path}: {len(missing)} mapped column(s) not in the input: {names}; "
            f"the input has {sorted(columns)[:20]}"
        )


# ------------------------------------------------------------------------------------------- standardize
def _number(df, column: str):
    """(parsed double or null, non-numeric flag) for a column of any type; blank strings count as missing."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    raw = F.col(f"`{column}`")
    if isinstance(df.schema[column].dataType, T.BooleanType):
        raw = raw.cast("int")
    if isinstance(df.schema[column].dataType, T.StringType):
        raw = F.trim(raw)
        blank = raw.isNull() | (raw == F.lit(""))
        value = F.when(blank, F.lit(None)).otherwise(raw.try_cast("double"))
        return value, ~blank & value.isNull()
    if isinstance(df.schema[column].dataType, (T.NumericType, T.BooleanType)):
        return raw.cast("double"), F.lit(False)
    return F.lit(None).cast("double"), raw.isNotNull()  # a list, map or struct is not a number


def _timestamp(df, column: str, pattern: str | None):
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    raw = F.col(f"`{column}`")
    kind = df.schema[column].dataType
    if isinstance(kind, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        return raw.cast("timestamp")
    if isinstance(kind, T.NumericType):
        return F.timestamp_seconds(raw)
    text = F.trim(raw.cast("string"))
    if pattern is not None:
        return F.try_to_timestamp(text, F.lit(pattern))
    seconds = text.try_cast("double")
    return F.when(seconds.isNotNull(), F.timestamp_seconds(seconds)).otherwise(F.try_to_timestamp(text))


def standardize(raw, cfg: ImportConfig):
    """The raw columns plus the typed ones the rules and `to_mdp` read (see the module docstring)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    typed: list[Any] = []
    flags = []
    for i, column in enumerate(numeric_sources(cfg)):
        value, bad = _number(raw, column)
        typed.append(value.alias(f"_n_{i}"))
        flags.append((column, bad))
    text = {c: F.nullif(F.trim(F.col(f"`{c}`").cast("string")), F.lit("")) for c in (
        cfg.session_column, cfg.action_column)}
    typed += [text[cfg.session_column].alias("_mdp_id"), text[cfg.action_column].alias("_action")]
    prop, _ = _number(raw, cfg.propensity_column)
    typed.append(prop.alias("_propensity"))
    typed.append((_timestamp(raw, cfg.timestamp_column, cfg.timestamp_format) if cfg.timestamp_column
                  else F.lit(None).cast("timestamp")).alias("_ts"))
    for j, column in enumerate(cfg.categorical_features):
        typed.append(F.nullif(F.trim(F.col(f"`{column}`").cast("string")), F.lit("")).alias(f"_cat_{j}"))
    if cfg.candidates_column:
        kind = raw.schema[cfg.candidates_column].dataType
        cand = F.col(f"`{cfg.candidates_column}`")
        if isinstance(kind, T.ArrayType):
            cand = cand.cast("array<string>")
        else:
            cand = F.split(F.trim(cand.cast("string")), re.escape(cfg.candidates_separator))
        cand = F.filter(F.transform(cand, lambda c: F.trim(c)), lambda c: c.isNotNull() & (c != F.lit("")))
        typed.append(F.array_distinct(cand).alias("_candidates"))
    out = raw.select("*", *typed)
    # Name the parsed numbers by role so that `to_mdp` can read them.
    index = {c: i for i, c in enumerate(numeric_sources(cfg))}
    renames = {"_reward": cfg.reward_column, **{f"_metric_{k}": c for k, c in enumerate(cfg.metric_columns)},
               **{f"_num_{k}": c for k, c in enumerate(cfg.numeric_features)}}
    if cfg.position_column:
        renames["_position"] = cfg.position_column
    if cfg.step_column:
        renames["_step_raw"] = cfg.step_column
    out = out.select("*", *[F.col(f"_n_{index[c]}").alias(new) for new, c in renames.items()])
    bad_number = None
    for column, bad in flags:
        bad_number = (F.when(bad, F.lit(f"non_numeric_value({column})")) if bad_number is None
                      else bad_number.when(bad, F.lit(f"non_numeric_value({column})")))
    return out.withColumn("_bad_number", bad_number if bad_number is not None else F.lit(None).cast("string"))


def annotate_reasons(std, cfg: ImportConfig):
    """Add `reason`: the first rule the row breaks (non_numeric_value carries the column), null when valid.

    Both copies of a duplicated (session, step) are flagged: there is no telling which one is right.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    rule = {r.name: r for r in rules(cfg)}
    null_required = F.col("_mdp_id").isNull() | F.col("_action").isNull()
    if cfg.step_column:
        null_required = null_required | (F.col(f"`{cfg.step_column}`").isNull() | (
            F.trim(F.col(f"`{cfg.step_column}`").cast("string")) == F.lit("")))
    if cfg.timestamp_column:
        null_required = null_required | F.col(f"`{cfg.timestamp_column}`").isNull()
    bad_ts = F.col("_ts").isNull() if cfg.timestamp_column else F.lit(False)
    prop = F.col("_propensity")
    bad_prop = prop.isNull() | F.isnan(prop) | (prop <= 0) | (prop > 1)
    bad_step = F.lit(False)
    if cfg.step_column:  # a step must be a whole number (it becomes sequence_number)
        bad_step = F.col("_step_raw") != F.floor(F.col("_step_raw"))
    row_reason = (
        F.when(null_required, rule["null_required"].name)
        .when(F.col("_bad_number").isNotNull(), F.col("_bad_number"))
        .when(bad_step, F.lit(f"non_numeric_value({cfg.step_column})"))
        .when(bad_ts, rule["unparseable_timestamp"].name)
        .when(bad_prop, rule["propensity_out_of_range"].name)
    )
    order = F.col("_step_raw") if cfg.step_column else F.col("_ts")
    window = Window.partitionBy("_mdp_id").orderBy(order)
    duplicate = F.coalesce((F.lag(order).over(window) == order) | (F.lead(order).over(window) == order),
                           F.lit(False))
    staged = std.withColumn("_row_reason", row_reason)
    return staged.withColumn(
        REASON,
        F.when(F.col("_row_reason") == rule["null_required"].name, F.col("_row_reason"))
        .when(F.col("_row_reason").isNull() & duplicate, rule["duplicate_step"].name)
        .otherwise(F.col("_row_reason")),
    ).drop("_row_reason")


def describe_invalid(annotated, counts: dict[str, int], cfg: ImportConfig, max_examples: int = 3) -> str:
    """One line: per broken rule (and column) its name, column, row count and a few example rows."""
    from pyspark.sql import functions as F

    by_name = {r.name: r for r in rules(cfg)}
    parts = []
    for reason, count in sorted(counts.items()):
        name, _, column = reason.partition("(")
        column = column.rstrip(")") or by_name[name].column
        shown = [c for c in dict.fromkeys([cfg.session_column, cfg.step_column or cfg.timestamp_column,
                                           column if column in annotated.columns else None]) if c]
        rows = (annotated.where(F.col(REASON) == reason).select(*[F.col(f"`{c}`") for c in shown])
                .limit(max_examples).collect())
        examples = ", ".join("(" + " ".join(f"{k}={row[k]!r}" for k in shown) + ")" for row in rows)
        parts.append(f"rule {name}: column {column} {by_name[name].broken} in {count} rows, e.g. {examples}")
    return "; ".join(parts)


# ------------------------------------------------------------------------------------------ the features
@dataclass
class FeaturePlan:
    """Every state feature id of the import with its name and kind, decided on the driver before `to_mdp`."""

    numeric: list[tuple[int, str]] = field(default_factory=list)  # (id, column) of _num_k / position
    categorical: list[dict[str, Any]] = field(default_factory=list)  # per categorical column: its encoding
    item_ids: dict[tuple[str, int], int] = field(default_factory=dict)  # (action, item feature index) -> id
    action_names: list[str] = field(default_factory=list)  # slot order
    item_features: list[str] = field(default_factory=list)
    descriptions: list[dict[str, Any]] = field(default_factory=list)  # the `features` of _features.json


def plan_features(cfg: ImportConfig, vocabularies: dict[str, list[str]], action_names: list[str],
                  items: dict[str, list[float | None]] | None) -> FeaturePlan:
    """Assign feature ids in a fixed order: numeric context columns (and the position), then the categorical
    columns (one id per vocabulary value, or one block of hash_buckets ids per column), then per action slot
    (in `action_names` order) one id per item feature."""
    plan = FeaturePlan(action_names=list(action_names), item_features=list(cfg.items.features) if cfg.items else [])
    next_id = 0
    context = [*cfg.numeric_features, *([cfg.position_column] if cfg.position_column else [])]
    for column in context:
        plan.numeric.append((next_id, column))
        plan.descriptions.append({"id": next_id, "name": f"context.{column}", "kind": "context", "slot": None})
        next_id += 1
    for j, column in enumerate(cfg.categorical_features):
        if cfg.categorical_encoding == "one_hot":
            vocab = {value: next_id + k for k, value in enumerate(vocabularies.get(column, []))}
            plan.categorical.append({"column": column, "index": j, "ids": vocab})
            for value, fid in vocab.items():
                plan.descriptions.append({"id": fid, "name": f"context.{column}={value}", "kind": "context",
                                          "slot": None})
            next_id += len(vocab)
        else:
            plan.categorical.append({"column": column, "index": j, "base": next_id})
            for bucket in sorted({int(b) for b in vocabularies.get(column, [])}):
                plan.descriptions.append({"id": next_id + bucket, "name": f"context.{column}#{bucket}",
                                          "kind": "context", "slot": None})
            next_id += cfg.hash_buckets
    if items is not None:
        for slot, action in enumerate(action_names):
            for d, feature in enumerate(plan.item_features):
                fid = next_id + slot * len(plan.item_features) + d
                plan.item_ids[(action, d)] = fid
                if items.get(action, [None] * len(plan.item_features))[d] is not None:
                    plan.descriptions.append({"id": fid, "name": f"item[{action}].{feature}", "kind": "document",
                                              "slot": slot})
    plan.descriptions.sort(key=lambda f: f["id"])
    return plan


def hash_bucket(column: str, value, buckets: int):
    """The bucket of a categorical value: xxhash64(column name, value) mod buckets (stable everywhere)."""
    from pyspark.sql import functions as F

    return F.pmod(F.xxhash64(F.lit(column), value), F.lit(buckets))


def distinct_values(valid, cfg: ImportConfig):
    """One row: `actions` (logged and candidate actions) and, per categorical column j, `cat_j` (its distinct
    values, or the distinct hash buckets as strings): the small driver-side summary the feature plan needs."""
    from pyspark.sql import functions as F

    columns = [F.collect_set("_action").alias("actions")]
    if cfg.candidates_column:
        columns.append(F.array_distinct(F.flatten(F.collect_set("_candidates"))).alias("candidates"))
    for j, column in enumerate(cfg.categorical_features):
        value = F.col(f"_cat_{j}")
        if cfg.categorical_encoding == "hash":
            value = F.when(value.isNotNull(), hash_bucket(column, value, cfg.hash_buckets).cast("string"))
        columns.append(F.collect_set(value).alias(f"cat_{j}"))
    return valid.agg(*columns)


# -------------------------------------------------------------------------------------------- to the mdp
def item_feature_map(plan: FeaturePlan, items: dict[str, list[float | None]]):
    """A constant map: action -> its item's per-candidate feature entries (array<struct<key, value>>)."""
    from pyspark.sql import functions as F

    keys, values = [], []
    for action in plan.action_names:
        feats = items.get(action)
        if feats is None:
            continue
        entries = [F.struct(F.lit(plan.item_ids[(action, d)]).cast("long").alias("key"),
                            F.lit(float(v)).cast("float").alias("value")) for d, v in enumerate(feats) if v is not None]
        if entries:
            keys.append(F.lit(action))
            values.append(F.array(*entries))
    if not keys:
        return None
    return F.map_from_arrays(F.array(*keys), F.array(*values))


def to_mdp(valid, cfg: ImportConfig, plan: FeaturePlan, items: dict[str, list[float | None]] | None = None,
           default_ds: str = "2026-01-01"):
    """Valid standardized rows -> the MDP columns.

    items: the item side table {action: feature values}; every candidate of a decision contributes its item's
    features to that row's state. The candidates are paired with the (constant) item map by one `map_zip_with`
    (a hash join of the two key sets: linear in candidates + items per row, no shuffle).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    entry = "struct<key:bigint,value:float>"
    context = [F.when(F.col(f"_num_{k}" if c != cfg.position_column else "_position").isNotNull(), F.struct(
        F.lit(fid).cast("long").alias("key"),
        F.col(f"_num_{k}" if c != cfg.position_column else "_position").cast("float").alias("value")))
        for k, (fid, c) in enumerate(plan.numeric)]
    df = valid
    for spec in plan.categorical:
        j, value = spec["index"], F.col(f"_cat_{spec['index']}")
        if "ids" in spec:  # one-hot: the value's id from a broadcast vocabulary
            vocab = df.sparkSession.createDataFrame(
                [(v, i) for v, i in spec["ids"].items()], f"_v_{j} string, _id_{j} long")
            df = df.join(F.broadcast(vocab), value == F.col(f"_v_{j}"), "left").drop(f"_v_{j}")
            fid = F.col(f"_id_{j}")
        else:
            fid = (F.lit(spec["base"]) + hash_bucket(spec["column"], value, cfg.hash_buckets)).cast("long")
        context.append(F.when(value.isNotNull() & fid.isNotNull(), F.struct(
            fid.cast("long").alias("key"), F.lit(1.0).cast("float").alias("value"))))
    entries = F.filter(F.array(*context), lambda e: e.isNotNull()) if context else F.array().cast(f"array<{entry}>")
    candidates = F.col("_candidates") if cfg.candidates_column else F.array(*[F.lit(a) for a in plan.action_names])
    item_map = item_feature_map(plan, items) if items is not None else None
    if item_map is not None:
        offered = F.map_from_arrays(candidates, F.array_repeat(F.lit(True), F.size(candidates)))
        zipped = F.map_zip_with(offered, item_map, lambda _k, shown, feats: F.when(shown.isNotNull(), feats))
        entries = F.concat(entries, F.flatten(F.filter(F.map_values(zipped), lambda e: e.isNotNull())))

    if cfg.timestamp_column and not cfg.step_column:
        step = F.row_number().over(Window.partitionBy("_mdp_id").orderBy("_ts")) - 1
    else:
        step = F.col("_step_raw")
    ds = F.date_format("_ts", "yyyy-MM-dd") if cfg.timestamp_column else F.lit(default_ds)
    metrics = [F.when(F.col(f"_metric_{k}").isNotNull(), F.struct(F.lit(c).alias("key"),
                                                                   F.col(f"_metric_{k}").alias("value")))
               for k, c in enumerate(cfg.metric_columns)]
    metric_map = (F.map_from_entries(F.filter(F.array(*metrics), lambda e: e.isNotNull())) if metrics
                  else F.create_map().cast("map<string,double>"))
    return df.select(
        ds.alias("ds"),
        F.col("_mdp_id").alias("mdp_id"),
        step.cast("long").alias("sequence_number"),
        F.map_from_entries(entries).alias("state_features"),
        F.col("_action").alias("action"),
        F.col("_propensity").cast("double").alias("action_probability"),
        F.col("_reward").cast("double").alias("reward"),
        candidates.alias("possible_actions"),
        metric_map.alias("metrics"),
    )
