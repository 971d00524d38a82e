"""Per-feature statistics of the timeline's state features, computed in Spark (pure: DataFrame in, dict out).

The state_features map is exploded once into (feature_id, value) rows; three distributed aggregations by feature id
follow: moments, approximate quantiles and distinct counts; the exact distinct values of the features with few of
them; and a bounded random sample per feature (for the Box-Cox fit and the normality tests, done on the driver
by `reagent_recsys.normalization`).
"""

from __future__ import annotations

import math

import numpy as np

from preprocessing.timeline import DataValidationError
from reagent_recsys.config import NormalizationConfig
from reagent_recsys.normalization import FeatureStatistics


def _exploded(timeline):
    from pyspark.sql import functions as F

    return timeline.select(F.explode("state_features").alias("feature_id", "value")).select(
        F.col("feature_id").cast("long").alias("feature_id"), F.col("value").cast("double").alias("value")
    )


def _check_finite(values, non_finite: dict[int, int]) -> None:
    from pyspark.sql import functions as F

    bad = values.filter(F.isnan("value") | F.col("value").isin(math.inf, -math.inf))
    examples = [(r.feature_id, r.value) for r in bad.limit(5).collect()]
    per_feature = ", ".join(f"feature {f}: {n}" for f, n in sorted(non_finite.items())[:10])
    raise DataValidationError(
        f"rule finite_feature_values: column state_features has {sum(non_finite.values())} NaN/inf values "
        f"({per_feature}); examples (feature_id, value): {examples}"
    )


def compute_feature_statistics(
    timeline, config: NormalizationConfig, seed: int = 0
) -> dict[int, FeatureStatistics]:
    """Statistics of every feature id in `timeline.state_features` (a DataFrame with the TIMELINE columns).

    Same input partitioning and seed -> same statistics and sample. Raises DataValidationError on NaN/inf values.
    """
    from pyspark import StorageLevel

    # Three passes read the values: explode the map once and keep the (feature_id, value) rows (16 bytes each,
    # compressed in Spark's columnar cache) instead of reading and exploding the timeline three times.
    values = _exploded(timeline).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _statistics(values, config, seed)
    finally:
        values.unpersist()


def _statistics(values, config: NormalizationConfig, seed: int) -> dict[int, FeatureStatistics]:
    from pyspark.sql import functions as F

    probs = [k / config.quantile_size for k in range(config.quantile_size + 1)]
    accuracy = max(1, int(round(1.0 / config.quantile_relative_error)))
    not_finite = F.isnan("value") | F.col("value").isin(math.inf, -math.inf)
    moments = (
        values.groupBy("feature_id")
        .agg(
            F.count("*").alias("count"),
            F.sum(F.when(not_finite, 1).otherwise(0)).alias("non_finite"),
            F.min("value").alias("min"),
            F.max("value").alias("max"),
            F.mean("value").alias("mean"),
            F.stddev_samp("value").alias("stddev"),
            F.skewness("value").alias("skewness"),
            F.percentile_approx("value", probs, accuracy).alias("quantiles"),
            F.approx_count_distinct("value").alias("approx_distinct"),
        )
        .collect()
    )
    non_finite = {r.feature_id: r.non_finite for r in moments if r.non_finite}
    if non_finite:
        _check_finite(values, non_finite)

    # Exact distinct values only where the approximate count says there can be at most `cap` of them (HLL++ is
    # near exact at such small counts; the margin absorbs its error): collect_set stays small, no big shuffle.
    cap = config.max_unique_enum_values
    few = [r.feature_id for r in moments if r.approx_distinct <= 2 * cap + 10]
    distinct: dict[int, list[float]] = {}
    if few:
        rows = (values.filter(F.col("feature_id").isin(few))
                .groupBy("feature_id").agg(F.collect_set("value").alias("values")).collect())
        distinct = {r.feature_id: sorted({float(v) for v in r["values"]}) for r in rows}  # -0.0 == 0.0

    # Bounded sample without a shuffle: Bernoulli draws a few standard deviations above `size` rows, trimmed to
    # the `size` smallest draws on the driver (so it holds `size` rows unless ~3 sigma unlucky).
    size = config.sample_size
    target = size + 3.0 * math.sqrt(size) + 10.0
    fractions = F.create_map(*[
        x for r in moments for x in (F.lit(r.feature_id).cast("long"), F.lit(min(1.0, target / r["count"])))
    ])
    drawn = (
        values.withColumn("draw", F.rand(seed))
        .filter(F.col("draw") < fractions[F.col("feature_id")])
        .toPandas()
        .sort_values(["feature_id", "draw", "value"], kind="stable")
    )
    samples = {
        int(f): np.sort(g["value"].to_numpy(np.float64)[:size]) for f, g in drawn.groupby("feature_id", sort=False)
    }

    stats = {}
    for r in moments:
        fid = int(r.feature_id)
        values_seen = distinct.get(fid, [])
        stats[fid] = FeatureStatistics(
            count=int(r["count"]),
            min=float(r["min"]),
            max=float(r["max"]),
            mean=float(r["mean"]),
            stddev=math.nan if r.stddev is None else float(r.stddev),
            skewness=math.nan if r.skewness is None else float(r.skewness),
            quantiles=[float(q) for q in r.quantiles],
            distinct_values=values_seen if 0 < len(values_seen) <= cap else None,
            approx_distinct=int(r.approx_distinct),
            sample=samples.get(fid, np.zeros(0)),
        )
    return dict(sorted(stats.items()))
