"""Feature statistics in Spark and the identified types, on a small hand-built timeline."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from preprocessing.normalization import compute_feature_statistics
from preprocessing.timeline import DataValidationError
from reagent_recsys.config import ConfigError, NormalizationConfig
from reagent_recsys.normalization import (
    BINARY,
    BOXCOX,
    CONTINUOUS,
    ENUM,
    PROBABILITY,
    QUANTILE,
    RareFeatureWarning,
    identify_normalization,
)
from reagent_recsys.schema import TIMELINE

N = 400
RARE = [0.5, 1.7, 2.2, -3.1, 4.4]  # feature 8 occurs in 5 rows only


def timeline_row(mdp_id: str, seq: int, state: dict[int, float], **overrides) -> dict:
    """One TIMELINE row with sensible defaults (a terminal step)."""
    row = dict(
        mdp_id=mdp_id, sequence_number=seq, sequence_number_ordinal=seq + 1, state_features=state, action="0",
        action_probability=0.5, reward=1.0, possible_actions=["0", "1"], metrics={}, next_state_features={},
        next_action="", possible_next_actions=[], time_diff=1, time_since_first=seq, not_terminal=False,
        n_step_reward=1.0, n_steps=1,
    )
    row.update(overrides)
    return row


def feature_columns(seed: int = 0) -> dict[int, np.ndarray]:
    """float32 values (what the map stores) per feature id; feature 8 is short (rare)."""
    rng = np.random.default_rng(seed)
    half = N // 2
    cols = {
        1: rng.integers(0, 2, N),
        2: rng.uniform(0, 1, N),
        3: rng.integers(0, 5, N),
        4: rng.normal(3.0, 0.2, N),  # stddev 0.2: ReAgent would floor it at 1
        5: rng.lognormal(0.0, 1.0, N),
        6: np.full(N, 7.0),
        7: np.concatenate([rng.normal(-5, 1, half), rng.normal(5, 1, N - half)]),  # bimodal
        8: np.array(RARE),
    }
    return {f: v.astype(np.float32) for f, v in cols.items()}


def build_timeline(spark, cols: dict[int, np.ndarray]):
    rows = []
    for i in range(N):
        state = {f: float(v[i]) for f, v in cols.items() if i < len(v)}
        rows.append(timeline_row(f"m{i // 10}", i % 10, state))
    return spark.createDataFrame(rows, TIMELINE.spark())


CONFIG = NormalizationConfig(quantile_k2_threshold=50.0)  # N is small: the K2 statistic grows with N


@pytest.fixture(scope="module")
def columns():
    return feature_columns()


@pytest.fixture(scope="module")
def timeline(spark, columns):
    return build_timeline(spark, columns).cache()


@pytest.fixture(scope="module")
def statistics(timeline):
    return compute_feature_statistics(timeline, CONFIG, seed=0)


def test_statistics_match_numpy(statistics, columns):
    assert sorted(statistics) == sorted(columns)
    for fid, v in columns.items():
        s, x = statistics[fid], v.astype(np.float64)
        assert s.count == len(x)
        assert s.min == x.min() and s.max == x.max()
        assert s.mean == pytest.approx(x.mean(), rel=1e-9, abs=1e-9)
        if fid != 6:
            assert s.stddev == pytest.approx(x.std(ddof=1), rel=1e-9)
            assert s.skewness == pytest.approx(sps.skew(x), rel=1e-6, abs=1e-9)
        assert len(s.quantiles) == CONFIG.quantile_size + 1
        tol = 1.0 / len(x) + 0.01  # rank error of an approximate quantile
        for p, q in zip(np.linspace(0, 1, CONFIG.quantile_size + 1), s.quantiles, strict=True):
            assert np.mean(x < q) - tol <= p <= np.mean(x <= q) + tol, (fid, p, q)
        assert np.array_equal(np.sort(s.sample), np.sort(x))  # sample_size > count: everything
    assert statistics[1].distinct_values == [0.0, 1.0]
    assert statistics[3].distinct_values == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert statistics[6].distinct_values == [7.0]
    assert statistics[4].distinct_values is None  # more than max_unique_enum_values


def test_types_and_parameters(statistics, columns):
    with pytest.warns(RareFeatureWarning, match="feature 8: only 5 values"):
        art = identify_normalization(statistics, CONFIG, names={4: "user.x", 99: "absent"})
    types = {f: art.parameters[f].feature_type for f in art.feature_ids}
    assert types == {1: BINARY, 2: PROBABILITY, 3: ENUM, 4: CONTINUOUS, 5: BOXCOX, 6: CONTINUOUS,
                     7: QUANTILE, 8: CONTINUOUS}
    assert art.feature_ids == [1, 2, 3, 4, 5, 6, 7, 8] and art.names == {4: "user.x"}
    x4 = columns[4].astype(np.float64)
    p4 = art.parameters[4]
    assert p4.stddev == pytest.approx(x4.std(ddof=1), rel=1e-9) and p4.stddev < 0.3  # not floored at 1
    assert p4.mean == pytest.approx(x4.mean())
    assert art.parameters[3].possible_values == [0.0, 1.0, 2.0, 3.0, 4.0]
    constant = art.parameters[6]
    assert (constant.mean, constant.stddev) == (7.0, 1.0)  # maps to 0; documented guard
    p5 = art.parameters[5]
    transformed, lam = sps.boxcox(columns[5].astype(np.float64))  # positive data: no shift
    assert p5.boxcox_shift == 0.0 and p5.boxcox_lambda == pytest.approx(lam, rel=1e-6)
    assert abs(lam) < 0.3  # lognormal -> close to a log transform
    assert p5.mean == pytest.approx(transformed.mean()) and p5.stddev == pytest.approx(transformed.std(ddof=1))
    q7 = art.parameters[7].quantiles
    assert q7[0] == columns[7].min() and q7[-1] == columns[7].max() and np.all(np.diff(q7) > 0)
    rare = art.parameters[8]  # still gets parameters from what exists
    assert rare.mean == pytest.approx(np.mean(np.float32(RARE))) and rare.stddev == pytest.approx(
        np.std(np.float32(RARE), ddof=1), rel=1e-6)


def test_overrides_and_skip_box_cox(statistics):
    config = CONFIG.model_copy(update={"overrides": {4: QUANTILE, 1: CONTINUOUS, 5: "DO_NOT_PREPROCESS"},
                                       "skip_box_cox": True})
    with pytest.warns(RareFeatureWarning):
        art = identify_normalization(statistics, config)
    assert art.parameters[4].feature_type == QUANTILE and len(art.parameters[4].quantiles) > 10
    assert art.parameters[1].feature_type == CONTINUOUS
    assert art.parameters[5].feature_type == "DO_NOT_PREPROCESS"
    skip = CONFIG.model_copy(update={"skip_box_cox": True})
    with pytest.warns(RareFeatureWarning):
        assert identify_normalization(statistics, skip).parameters[5].feature_type != BOXCOX
    forced = CONFIG.model_copy(update={"overrides": {4: BOXCOX, 6: CONTINUOUS}})
    with pytest.warns(RareFeatureWarning):
        art = identify_normalization(statistics, forced)
    assert art.parameters[4].feature_type == BOXCOX and art.parameters[4].boxcox_lambda is not None
    assert statistics[6].stddev < 1e-12 and art.parameters[6].stddev == 1.0  # not the rounding noise


@pytest.mark.parametrize("overrides, message", [
    ({4: ENUM}, r"normalization\.overrides\.4: ENUM needs at most"),
    ({6: QUANTILE}, r"normalization\.overrides\.6: QUANTILE cannot be fitted .* constant"),
    ({99: BINARY}, r"normalization\.overrides: feature ids \[99\] do not occur"),
])
def test_impossible_overrides_are_config_errors(statistics, overrides, message):
    with pytest.raises(ConfigError, match=message):
        identify_normalization(statistics, CONFIG.model_copy(update={"overrides": overrides}))


def test_bounded_sample_is_seeded(timeline):
    config = CONFIG.model_copy(update={"sample_size": 50})
    first = compute_feature_statistics(timeline, config, seed=3)
    again = compute_feature_statistics(timeline, config, seed=3)
    assert len(first[4].sample) == 50 and len(first[8].sample) == 5
    assert all(np.array_equal(first[f].sample, again[f].sample) for f in first)
    assert first[4].count == N  # moments still use every value


def test_nan_feature_values_are_rejected(spark):
    rows = [timeline_row("a", i, {1: float(i), 2: math.nan if i in (3, 5) else 1.0}) for i in range(8)]
    df = spark.createDataFrame(rows, TIMELINE.spark())
    with pytest.raises(DataValidationError, match=r"finite_feature_values: column state_features has 2 "
                                                  r"NaN/inf values \(feature 2: 2\).*\(2, nan\)"):
        compute_feature_statistics(df, CONFIG)


def test_artifact_records_statistics(tmp_path, statistics):
    with pytest.warns(RareFeatureWarning):
        art = identify_normalization(statistics, CONFIG, inputs={"config_hash": "abc"})
    path = tmp_path / "normalization.json"
    art.save(path)
    loaded = type(art).load(path)
    assert loaded.parameters == art.parameters and loaded.inputs == {"config_hash": "abc"}
    assert loaded.statistics[4].count == N and loaded.statistics[4].stddev == statistics[4].stddev
    assert math.isnan(loaded.statistics[6].skewness) or loaded.statistics[6].skewness == statistics[6].skewness
