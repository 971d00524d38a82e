"""The timeline operator's pure core: mdp rows -> validated n-step transitions with a stable train/eval split.

Every function here takes and returns DataFrames (or small driver-side summaries); none builds a session or
touches storage. Everything is column expressions and window functions over one window, partitioned by mdp_id
and ordered by sequence_number, so Spark shuffles the table once per pass and runs no Python per row.

Order of the steps (what the counts in the manifest mean):
  1. `filter_ds`: the ds range is a read filter; rows outside it are never counted.
  2. `annotate_reasons`: each row gets the first validation rule it breaks (`reason`, null when valid).
  3. `mark_quarantine` (timeline.on_invalid: quarantine): an episode with an invalid row is never spliced around
     it: `drop_episode` drops the whole episode, `cut_episode` keeps its valid steps before the first invalid
     one; the last `multi_steps` of those (whose transitions would need the invalid step) are then only next
     states ("quarantine_cut_tail"). Other valid rows of such an episode are "quarantined_episode".
  4. the outlier filter drops whole episodes longer than the percentile of kept episode lengths;
  5. with timeline.history, each kept row's state gets its history features over the kept rows of its episode
     (reagent_recsys/history.py; the job adds them), so the next states below carry them too;
  6. transitions are built on the kept rows of each episode, then the time window drops steps with
     time_since_first >= time_window (a kept step keeps its real next state: a window cut is not a terminal).
"""

from __future__ import annotations

from dataclasses import dataclass

from reagent_recsys.schema import MDP, TIMELINE, DataRuleError

REASON = "reason"
SPLIT = "split"
SPLITS = ("train", "eval")
_BUCKETS = 1_000_000  # split resolution: eval_fraction is rounded to 1e-6
LAST_DS = "_last_ds"  # an episode's last valid ds: what the time split looks at


class DataValidationError(DataRuleError):
    """The input table breaks a data rule; the message names the rule, the column, a count and examples."""


@dataclass(frozen=True)
class Rule:
    name: str
    column: str
    broken: str  # what is wrong, e.g. "is NaN or infinite"


RULES: tuple[Rule, ...] = (
    Rule("null_required", "mdp_id/sequence_number/state_features/action/possible_actions/metrics", "is null"),
    Rule("duplicate_step", "(mdp_id, sequence_number)", "appears more than once"),
    Rule("non_finite_reward", "reward", "is null, NaN or infinite"),
    Rule("action_probability_out_of_range", "action_probability", "is null, NaN or outside (0, 1]"),
    Rule("action_not_possible", "action", "is not in possible_actions"),
)
QUARANTINED = "quarantined_episode"  # valid rows dropped with (or cut from) an episode that has an invalid row
FILTERS = (QUARANTINED, "outlier_episode_length", "quarantine_cut_tail", "time_window")
QUARANTINE_MODES = ("drop_episode", "cut_episode")
_REQUIRED = ("mdp_id", "sequence_number", "state_features", "action", "possible_actions", "metrics")


def _episode_window(ordered: bool = True):
    from pyspark.sql import Window

    window = Window.partitionBy("mdp_id")
    return window.orderBy("sequence_number") if ordered else window


def filter_ds(df, ds_start: str | None, ds_end: str | None):
    """Rows with ds_start <= ds <= ds_end (ISO dates compare as strings); a partitioned input is pruned."""
    from pyspark.sql import functions as F

    if ds_start is not None:
        df = df.where(F.col("ds") >= F.lit(ds_start))
    if ds_end is not None:
        df = df.where(F.col("ds") <= F.lit(ds_end))
    return df


def annotate_reasons(df):
    """Add `reason`: the first rule of RULES the row breaks, null for a valid row.

    Both copies of a duplicated (mdp_id, sequence_number) are flagged: there is no telling which one is right.
    """
    from pyspark.sql import functions as F

    reward, prob = F.col("reward"), F.col("action_probability")
    null_required = F.lit(False)
    for name in _REQUIRED:
        null_required = null_required | F.col(name).isNull()
    non_finite = reward.isNull() | F.isnan(reward) | (F.abs(reward) == F.lit(float("inf")))
    bad_prob = prob.isNull() | F.isnan(prob) | (prob <= 0) | (prob > 1)
    not_possible = ~F.coalesce(F.array_contains("possible_actions", F.col("action")), F.lit(False))
    # The row rules are computed before the shuffle so that the validation pass ships only three columns.
    row_reason = (
        F.when(null_required, RULES[0].name)
        .when(non_finite, RULES[2].name)
        .when(bad_prob, RULES[3].name)
        .when(not_possible, RULES[4].name)
    )
    seq, window = F.col("sequence_number"), _episode_window()
    duplicate = F.coalesce((F.lag(seq).over(window) == seq) | (F.lead(seq).over(window) == seq), F.lit(False))
    return (
        df.withColumn("_row_reason", row_reason)
        .withColumn(
            REASON,
            F.when(F.col("_row_reason") == RULES[0].name, F.col("_row_reason"))
            .when(duplicate, RULES[1].name)
            .otherwise(F.col("_row_reason")),
        )
        .drop("_row_reason")
    )


def mark_quarantine(annotated, mode: str = "drop_episode"):
    """Add `_kept` (the row goes into transitions) and `_cut` (its episode was cut short at an invalid row).

    drop_episode: an episode with any invalid row keeps nothing; cut_episode: it keeps its valid rows before its
    first invalid one (a row without a sequence number cuts at the start). Never a splice: no transition spans
    a removed row.
    """
    from pyspark.sql import functions as F

    if mode not in QUARANTINE_MODES:
        raise ValueError(f"timeline.quarantine: expected one of {QUARANTINE_MODES}, got {mode!r}")
    seq, bad = F.col("sequence_number"), F.col(REASON).isNotNull()
    first_bad = F.min(F.when(bad, F.coalesce(seq, F.lit(-(2**63)).cast("long")))).over(_episode_window(False))
    marked = annotated.withColumn("_first_bad", first_bad)
    clean = F.col("_first_bad").isNull()
    before_cut = clean | (seq < F.col("_first_bad")) if mode == "cut_episode" else clean
    return (marked.withColumn("_kept", F.col(REASON).isNull() & before_cut)
            .withColumn("_cut", F.lit(mode == "cut_episode") & ~clean)
            .withColumn("_bad_episode", ~clean)
            .drop("_first_bad"))


def split_column(eval_fraction: float, eval_from: str | None = None):
    """'eval' or 'train' for whole episodes, the same way every run, on every cluster.

    eval_from None (split hash): from a stable hash of mdp_id (Spark's xxhash64, fixed seed). Otherwise (split
    time): 'eval' when the episode's last valid `ds` (column `_last_ds`) is >= eval_from, so that nothing on or
    after eval_from is ever trained on (an episode that crosses the boundary is evaluated, whole).
    """
    from pyspark.sql import functions as F

    if eval_from is not None:
        return F.when(F.col(LAST_DS) >= F.lit(eval_from), F.lit("eval")).otherwise(F.lit("train"))
    cut = int(round(eval_fraction * _BUCKETS))
    bucket = F.pmod(F.xxhash64(F.col("mdp_id")), F.lit(_BUCKETS))
    return F.when(bucket < F.lit(cut), F.lit("eval")).otherwise(F.lit("train"))


def episode_histogram(marked, eval_fraction: float, time_window: int | None, multi_steps: int = 1,
                      eval_from: str | None = None):
    """Per (split, kept episode length): episodes, rows per reason and per drop, from `mark_quarantine`'s output,
    and the first and last `ds` (ds_min, ds_max).

    A small table (distinct lengths x 2) from which the driver derives the outlier threshold and every count of
    the manifest without another pass over the data. `tail`: the last min(n, length) kept rows of a cut
    episode; `late_out`: rows past the time window that are not in that tail (both are suffixes of the kept rows).
    """
    from pyspark.sql import functions as F

    kept = F.col("_kept")
    first_kept = F.min(F.when(kept, F.col("sequence_number"))).over(_episode_window(ordered=False))
    late = F.lit(False) if time_window is None else (
        F.col("sequence_number") - F.col("_first_kept") >= F.lit(time_window)
    )
    per_episode = (
        marked.select("mdp_id", "sequence_number", "ds", REASON, "_kept", "_cut", "_bad_episode")
        .withColumn("_first_kept", first_kept)
        .groupBy("mdp_id")
        .agg(
            F.count(F.lit(1)).alias("rows"),
            F.count(F.when(kept, 1)).alias("length"),
            F.count(F.when(kept & late, 1)).alias("late"),
            F.count(F.when(F.col(REASON).isNull() & ~kept, 1)).alias(QUARANTINED),
            F.max(F.col("_cut").cast("int")).alias("cut"),
            F.max(F.col("_bad_episode").cast("int")).alias("bad_episode"),
            *[F.count(F.when(F.col(REASON) == r.name, 1)).alias(r.name) for r in RULES],
            F.min("ds").alias("ds_min"),
            F.max("ds").alias("ds_max"),
            F.coalesce(F.max(F.when(kept, F.col("ds"))), F.max("ds")).alias(LAST_DS),
        )
        .withColumn("tail", F.when(F.col("cut") == 1, F.least(F.lit(multi_steps), F.col("length"))).otherwise(0))
        .withColumn("late_out", F.greatest(F.col("late") - F.col("tail"), F.lit(0)))
        .withColumn("has_rows", (F.col("length") - F.col("tail") - F.col("late_out") > 0).cast("int"))
        .withColumn(SPLIT, split_column(eval_fraction, eval_from))
    )
    sums = [F.sum(c).alias(c) for c in ("rows", "late_out", "tail", "has_rows", "bad_episode", QUARANTINED,
                                        *(r.name for r in RULES))]
    return per_episode.groupBy(SPLIT, "length").agg(
        F.count(F.lit(1)).alias("episodes"), *sums, F.min("ds_min").alias("ds_min"), F.max("ds_max").alias("ds_max")
    )


def split_ranges(histogram: list[dict]) -> dict[str, list[str] | None]:
    """Per split, [first ds, last ds] of its input rows (None for an empty split)."""
    result: dict[str, list[str] | None] = {}
    for split in SPLITS:
        part = [h for h in histogram if h[SPLIT] == split]
        result[split] = [min(h["ds_min"] for h in part), max(h["ds_max"] for h in part)] if part else None
    return result


def _empty(spark_type):
    from pyspark.sql import functions as F

    return F.array().cast(spark_type) if spark_type.typeName() == "array" else F.create_map().cast(spark_type)


def build_timeline(
    valid,
    *,
    multi_steps: int,
    gamma: float,
    eval_fraction: float,
    max_episode_length: float | None = None,
    time_window: int | None = None,
    eval_from: str | None = None,
):
    """Valid mdp rows (with `_cut` from `mark_quarantine` if quarantining) -> the TIMELINE columns plus `split`.

    Step t of an episode of length L pairs with step t + n (n = multi_steps): n_step_reward sums
    gamma^k reward_{t+k} over k < n_steps = min(n, L - t); when t + n is past the end the transition is terminal
    (not_terminal false, empty next_*, time_diff 1). With n = 1 only the last step is terminal.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    n = multi_steps
    spark_types = {f.name: f.dataType for f in TIMELINE.spark().fields}
    # One partitioning and one ordering for every window expression: Spark evaluates them all in one Window
    # operator after one sort (an unordered window for the length would cost a second operator).
    ordered = _episode_window()
    whole = ordered.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    seq = F.col("sequence_number")
    cut = ["_cut"] if "_cut" in valid.columns else []
    staged = valid.select(
        *MDP.names,
        *cut,
        F.count(F.lit(1)).over(whole).alias("_length"),
        F.first(seq).over(whole).alias("_first_seq"),
        F.row_number().over(ordered).cast("long").alias("sequence_number_ordinal"),
        F.lead(seq, n).over(ordered).alias("_next_seq"),
        # One lead of a struct instead of one per column: one offset frame copies the next row's fields.
        F.lead(F.struct("state_features", "action", "possible_actions"), n).over(ordered).alias("_next"),
        (F.col("reward") if n == 1 else F.collect_list("reward").over(ordered.rowsBetween(0, n - 1))).alias(
            "_rewards"
        ),
        *([F.max("ds").over(whole).alias(LAST_DS)] if eval_from is not None else []),
    )
    if max_episode_length is not None:
        staged = staged.where(F.col("_length") <= F.lit(max_episode_length))
    if cut:  # a cut episode's last steps would reach the quarantined step: they are next states only
        staged = staged.where(~(F.col("_cut") & F.col("_next_seq").isNull()))
    if n == 1:
        n_step_reward = F.col("_rewards")
    else:  # ((0 + r_t) + g r_{t+1}) + g^2 r_{t+2} ...
        discounted = F.transform("_rewards", lambda r, k: r * F.pow(F.lit(float(gamma)), k))
        n_step_reward = F.aggregate(discounted, F.lit(0.0), lambda acc, x: acc + x)
    not_terminal = F.col("_next_seq").isNotNull()
    out = staged.select(
        "mdp_id",
        "sequence_number",
        "sequence_number_ordinal",
        "state_features",
        "action",
        "action_probability",
        "reward",
        "possible_actions",
        "metrics",
        F.coalesce("_next.state_features", _empty(spark_types["next_state_features"])).alias("next_state_features"),
        F.coalesce("_next.action", F.lit("")).alias("next_action"),
        F.coalesce("_next.possible_actions", _empty(spark_types["possible_next_actions"])).alias(
            "possible_next_actions"
        ),
        F.coalesce(F.col("_next_seq") - seq, F.lit(1)).cast("long").alias("time_diff"),
        (seq - F.col("_first_seq")).cast("long").alias("time_since_first"),
        not_terminal.alias("not_terminal"),
        n_step_reward.cast("double").alias("n_step_reward"),
        F.least(F.lit(n), F.col("_length") - F.col("sequence_number_ordinal") + 1).cast("long").alias("n_steps"),
        split_column(eval_fraction, eval_from).alias(SPLIT),
    )
    if time_window is not None:
        out = out.where(F.col("time_since_first") < F.lit(time_window))
    return out


def _null_columns(annotated) -> list[tuple[str, int]]:
    """(column, rows) for each required column that is null in rows flagged null_required."""
    from pyspark.sql import functions as F

    flagged = annotated.where(F.col(REASON) == RULES[0].name)
    counts = flagged.agg(*[F.count(F.when(F.col(c).isNull(), 1)).alias(c) for c in _REQUIRED]).first()
    return [(c, int(counts[c])) for c in _REQUIRED if counts[c]]


def describe_invalid(annotated, counts: dict[str, int], max_examples: int = 5) -> str:
    """One line: for each broken rule its name, column, row count and up to `max_examples` example rows."""
    from pyspark.sql import functions as F

    parts = []
    for rule in RULES:
        count = counts.get(rule.name, 0)
        if not count:
            continue
        shown = ["mdp_id", "sequence_number"]
        column = f"column {rule.column}"
        if rule.name == "null_required":  # name the null column(s), with their counts
            nulls = _null_columns(annotated)
            column = "column " + ", ".join(f"{c} ({n} rows)" if len(nulls) > 1 else c for c, n in nulls)
            shown += [c for c, _ in nulls if c not in shown]
        if rule.column in MDP.names and rule.column not in shown:
            shown.append(rule.column)
        if rule.name == "action_not_possible":
            shown.append("possible_actions")
        rows = (
            annotated.where(F.col(REASON) == rule.name)
            .select(*shown)
            .orderBy("mdp_id", "sequence_number")
            .limit(max_examples)
            .collect()
        )
        examples = ", ".join("(" + " ".join(f"{k}={row[k]!r}" for k in shown) + ")" for row in rows)
        parts.append(f"rule {rule.name}: {column} {rule.broken} in {count} rows, e.g. {examples}")
    return "; ".join(parts)


def quarantined_episodes(marked, limit: int = 10) -> list[str]:
    """The first `limit` mdp_ids (sorted) of episodes with an invalid row, for the manifest."""
    from pyspark.sql import functions as F

    rows = (marked.where(F.col("_bad_episode") & F.col("mdp_id").isNotNull()).select("mdp_id").distinct()
            .orderBy("mdp_id").limit(limit).collect())
    return [str(r.mdp_id) for r in rows]


def length_threshold(histogram: list[dict], percentile: float | None) -> float | None:
    """The `percentile` (0-1, linear interpolation) of valid episode lengths over both splits; None when off."""
    import numpy as np

    if percentile is None:
        return None
    kept = [h for h in histogram if h["length"] > 0]
    if not kept:
        return None
    lengths = np.repeat([h["length"] for h in kept], [h["episodes"] for h in kept])  # (episodes,)
    return float(np.percentile(lengths, percentile * 100.0))


def split_counts(histogram: list[dict], threshold: float | None) -> dict[str, dict]:
    """Per split: rows in, rows out and rows dropped per reason (validation rules, quarantine, then the filters).

    rows_in == rows_out + sum(dropped) holds by construction; the job checks rows_out against what it wrote.
    """
    result = {}
    for split in SPLITS:
        part = [h for h in histogram if h[SPLIT] == split]
        outlier = [h for h in part if threshold is not None and h["length"] > threshold]
        kept = [h for h in part if not (threshold is not None and h["length"] > threshold)]
        dropped = {r.name: sum(h[r.name] for h in part) for r in RULES}
        dropped[QUARANTINED] = sum(h[QUARANTINED] for h in part)
        dropped["outlier_episode_length"] = sum(h["length"] * h["episodes"] for h in outlier)
        dropped["quarantine_cut_tail"] = sum(h["tail"] for h in kept)
        dropped["time_window"] = sum(h["late_out"] for h in kept)
        rows_in = sum(h["rows"] for h in part)
        result[split] = {
            "rows_in": rows_in,
            "rows_out": rows_in - sum(dropped.values()),
            "rows_dropped": dropped,
            "episodes_in": sum(h["episodes"] for h in part),
            "episodes_out": sum(h["has_rows"] for h in kept),
            "episodes_quarantined": sum(h["bad_episode"] for h in part),
        }
    return result
