"""mdp_key without Spark equals Spark's xxhash64(mdp_id), so tables keyed by mdp_id join the training table."""

from __future__ import annotations

import numpy as np

from reagent_recsys.data.keys import mdp_keys


def test_mdp_keys_equal_spark_xxhash64(spark):
    from pyspark.sql import functions as F

    ids = ["", "a", "abcd", "abcdefg", "episode_000001", "x" * 31, "y" * 32, "z" * 65, "é€ ✓ unicode beyond 32 bytes!!"]
    rows = spark.createDataFrame([(i,) for i in ids], "mdp_id string").select(F.xxhash64("mdp_id").alias("k"))
    assert [r.k for r in rows.collect()] == mdp_keys(ids).tolist()


def test_mdp_keys_hash_each_distinct_id_once_and_keep_the_row_order():
    keys = mdp_keys(["b", "a", "b"])
    assert keys.dtype == np.int64 and keys[0] == keys[2] != keys[1]
    assert mdp_keys([]).shape == (0,)
