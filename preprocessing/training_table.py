"""The dense training table (pure: timeline DataFrame + feature order + action names -> DataFrame).

Maps become fixed-length float32 arrays in the normalization artifact's feature order (0 where absent, with a
presence array), actions become integer indices into `action_names`, possible actions become masks, and terminal
rows get zeros: the result has exactly the columns of `reagent_recsys.schema.TRAINING`, numeric only and non-null,
so petastorm can read it. Compiled column expressions only; no Python UDFs.
"""

from __future__ import annotations

import re

from preprocessing.timeline import DataValidationError
from reagent_recsys.schema import TRAINING

_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")


def sort_action_names(names: set[str] | list[str]) -> list[str]:
    """Numeric-aware order: numbers by value ("2" before "10"), then other names alphabetically."""
    def key(name: str) -> tuple[int, float, str]:
        return (0, float(name), name) if _NUMBER.match(name) else (1, 0.0, name)

    return sorted(set(names), key=key)


def _action_columns(timeline):
    """Every action name the timeline mentions, as one string column `a` (a DataFrame)."""
    from pyspark.sql import functions as F

    mentioned = F.array_union(
        F.array(F.col("action"), F.col("next_action")),
        F.array_union(F.col("possible_actions"), F.col("possible_next_actions")),
    )
    return timeline.select(F.explode(mentioned).alias("a")).where(F.col("a").isNotNull() & (F.col("a") != ""))


def collect_action_names(*timelines) -> list[str]:
    """The sorted distinct actions (logged, next and possible) of one or more timeline DataFrames."""
    names: set[str] = set()
    for timeline in timelines:
        names.update(r.a for r in _action_columns(timeline).distinct().collect())
    if not names:
        raise DataValidationError("rule actions_present: column action: the timeline names no action (0 rows?)")
    return sort_action_names(names)


def check_actions(timeline, action_names: list[str]) -> None:
    """Raise DataValidationError when the timeline mentions an action outside `action_names`."""
    from pyspark.sql import functions as F

    unknown = _action_columns(timeline).where(~F.col("a").isin(action_names))
    count = unknown.count()
    if count:
        examples = sorted({r.a for r in unknown.limit(50).collect()})[:5]
        raise DataValidationError(
            f"rule known_action: columns action/next_action/possible_actions/possible_next_actions: {count} "
            f"rows mention actions outside training_table.action_names {action_names[:10]}; examples: {examples}"
        )


# Up to this many features + actions, one compiled expression per feature and per action is the cheaper
# formulation (0.5 vs 1.25 JVM CPU-s per million values at 24 features x 10 actions, benchmarks/RESULTS.md).
# Past it the zip formulation: its generated code does not grow with the width (the per-id one fails to compile
# past ~100 features and scans each map once per feature).
LOOKUP_MAX_WIDTH = 64


def build_training_table(timeline, feature_ids: list[int], action_names: list[str], formulation: str = "auto"):
    """The TRAINING columns for a timeline DataFrame (TIMELINE columns). Features outside `feature_ids` are
    dropped; actions outside `action_names` become nulls, so check them first (`check_actions`).

    `formulation` "lookup": one expression per feature id (`m[id]`) and per action (`array_contains`): compiled,
    cheapest when narrow, but the generated code grows with the width and each lookup scans the map (cost per
    row ~ features x map entries). "zip": each map is densified by one `map_zip_with` against a constant template
    map holding every feature id; Spark pairs the two maps' keys through a hash table and lists the template's
    keys first, in template order, so the zipped map's first F values are the dense vector (possible-action lists
    become masks the same way): constant code size, cost linear in features + entries. "auto": lookup up to
    LOOKUP_MAX_WIDTH features + actions, else zip.
    """
    from pyspark.sql import functions as F

    if not feature_ids or not action_names:
        raise ValueError("build_training_table needs at least one feature id and one action name")
    nf, na = len(feature_ids), len(action_names)
    if formulation == "auto":
        formulation = "lookup" if nf + na <= LOOKUP_MAX_WIDTH else "zip"
    if formulation not in ("lookup", "zip"):
        raise ValueError(f"formulation must be auto, lookup or zip, got {formulation!r}")
    index = F.create_map(*[x for k, a in enumerate(action_names) for x in (F.lit(a), F.lit(k).cast("long"))])
    not_terminal = F.col("not_terminal")

    if formulation == "lookup":
        ids = [F.lit(int(f)).cast("long") for f in feature_ids]  # (F,)
        staged = timeline

        def dense(features: str):  # map<long, float> -> (F,) float32, 0 where absent
            return F.array(*[F.coalesce(F.col(features)[i], F.lit(0.0)).cast("float") for i in ids])

        def presence(features: str):  # (F,) int8
            return F.array(*[F.col(features)[i].isNotNull().cast("byte") for i in ids])

        def mask(actions: str):  # list<string> -> (A,) int8
            return F.array(*[
                F.coalesce(F.array_contains(F.col(actions), F.lit(a)), F.lit(False)).cast("byte")
                for a in action_names
            ])
    else:
        feature_template = F.map_from_arrays(
            F.array(*[F.lit(int(f)).cast("long") for f in feature_ids]), F.array_repeat(F.lit(True), nf)
        )  # constant-folded into one literal
        action_template = F.map_from_arrays(
            F.array(*[F.lit(a) for a in action_names]), F.array_repeat(F.lit(True), na)
        )

        def aligned(features: str):  # map<long, float> -> (F,) float, null where absent
            zipped = F.map_zip_with(feature_template, F.col(features), lambda _k, _t, v: v)
            return F.slice(F.map_values(zipped), 1, nf)

        # The aligned vectors are columns of their own, so values and presence read one zip each (Spark does
        # not collapse a projection whose expensive expressions would then be evaluated twice).
        staged = timeline.select(
            "*", aligned("state_features").alias("_state"), aligned("next_state_features").alias("_next_state")
        )

        def dense(features: str):  # (F,) float32, 0 where absent
            raw = "_state" if features == "state_features" else "_next_state"
            return F.transform(raw, lambda v: F.coalesce(v, F.lit(0.0)).cast("float"))

        def presence(features: str):  # (F,) int8
            raw = "_state" if features == "state_features" else "_next_state"
            return F.transform(raw, lambda v: v.isNotNull().cast("byte"))

        def mask(actions: str):  # list<string> -> (A,) int8
            distinct = F.array_distinct(F.col(actions))
            present = F.map_from_arrays(distinct, F.array_repeat(F.lit(True), F.size(distinct)))
            zipped = F.map_zip_with(action_template, present, lambda _k, _t, v: v.isNotNull().cast("byte"))
            return F.slice(F.map_values(zipped), 1, na)

    def zeros(kind: str, n: int):
        return F.array_repeat(F.lit(0).cast(kind), n)

    columns = {
        "mdp_key": F.xxhash64("mdp_id"),
        "sequence_number": F.col("sequence_number").cast("long"),
        "state": dense("state_features"),
        "state_presence": presence("state_features"),
        "action": F.try_element_at(index, F.col("action")),
        "action_probability": F.col("action_probability").cast("double"),
        "reward": F.col("reward").cast("double"),
        "n_step_reward": F.col("n_step_reward").cast("double"),
        "next_state": F.when(not_terminal, dense("next_state_features")).otherwise(zeros("float", nf)),
        "next_state_presence": F.when(not_terminal, presence("next_state_features")).otherwise(zeros("byte", nf)),
        "next_action": F.when(not_terminal, F.try_element_at(index, F.col("next_action"))).otherwise(F.lit(0).cast("long")),
        "possible_actions_mask": mask("possible_actions"),
        "possible_next_actions_mask": F.when(not_terminal, mask("possible_next_actions")).otherwise(
            zeros("byte", na)
        ),
        "not_terminal": not_terminal.cast("boolean"),
        "time_diff": F.col("time_diff").cast("long"),
        "n_steps": F.col("n_steps").cast("long"),
    }
    table = staged.select(*[columns[name].alias(name) for name in TRAINING.names])
    TRAINING.check_spark(table.schema, allow_extra=False)
    return table


def by_key_range(table, num_files: int):
    """`table` in `num_files` partitions of contiguous mdp_key ranges, sorted by (mdp_key, sequence_number):
    written out, file i holds the i-th range. The same rows give the same files whatever ran before.

    Trap: `repartitionByRange` samples its bounds with a seed derived from the RDD id, which depends on what ran
    earlier in the session; the same rows then split differently (and train to different weights). Here the
    range of a row is a fixed function of mdp_key (a uniform 64-bit hash), and each range goes to its own
    partition through Spark's hash partitioning (Murmur3, seed 42: `F.hash`) of a stand-in value chosen so that
    range i hashes to partition i.
    """
    from pyspark.sql import functions as F

    n = int(num_files)
    probes = table.sparkSession.range(0, 64 * n).select(
        "id", F.pmod(F.hash("id"), F.lit(n)).alias("p")).collect()
    stand_in: dict[int, int] = {}
    for row in probes:
        stand_in.setdefault(int(row.p), int(row.id))
    if len(stand_in) < n:  # 64 n probes miss a residue with probability ~n e^-64
        raise RuntimeError(f"by_key_range: found no stand-in value for {n - len(stand_in)} of {n} partitions")
    # range = floor((key + 2^63) * n / 2^64), clamped: contiguous, equally likely key ranges
    fraction = (F.col("mdp_key").cast("double") / F.lit(2.0**64)) + F.lit(0.5)
    bucket = F.least(F.greatest(F.floor(fraction * F.lit(n)), F.lit(0)), F.lit(n - 1)).cast("int")
    values = F.array(*[F.lit(stand_in[i]).cast("long") for i in range(n)])
    keyed = table.withColumn("_partition", F.element_at(values, bucket + 1))
    return (keyed.repartition(n, "_partition").sortWithinPartitions("mdp_key", "sequence_number")
            .drop("_partition"))
