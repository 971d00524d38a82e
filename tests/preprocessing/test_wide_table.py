"""Wide training tables: the zip formulation equals the per-id one, and its generated code does not grow."""

from __future__ import annotations

import re

from preprocessing.training_table import build_training_table


def timeline_rows(spark, rows: list[dict]):
    from reagent_recsys.schema import TIMELINE

    return spark.createDataFrame(rows, TIMELINE.spark())


def row(mdp_id, seq, state, possible, next_state=None, next_possible=(), not_terminal=True, action="b"):
    return {
        "mdp_id": mdp_id, "sequence_number": seq, "sequence_number_ordinal": seq + 1, "state_features": state,
        "action": action, "action_probability": 0.5, "reward": 1.0, "possible_actions": list(possible),
        "metrics": {}, "next_state_features": next_state or {}, "next_action": "a" if not_terminal else "",
        "possible_next_actions": list(next_possible), "time_diff": 1, "time_since_first": seq,
        "not_terminal": not_terminal, "n_step_reward": 1.0, "n_steps": 1,
    }


def test_zip_formulation_equals_lookup(spark):
    # Map keys out of order, keys outside feature_ids, missing features, repeated possible actions, a terminal.
    rows = [
        row("e1", 0, {9: 1.5, 3: -2.0, 42: 7.0}, ["c", "a", "c", "zz"], {5: 0.25}, ["b"]),
        row("e1", 1, {5: 3.0}, ["b"], not_terminal=False),
        row("e2", 0, {}, [], {3: 1.0, 9: 2.0, 5: 4.0}, ["a", "b", "c"]),
    ]
    df = timeline_rows(spark, rows)
    ids, actions = [5, 3, 9], ["a", "b", "c"]
    lookup = [r.asDict() for r in build_training_table(df, ids, actions, "lookup").collect()]
    zipped = [r.asDict() for r in build_training_table(df, ids, actions, "zip").collect()]
    assert zipped == lookup
    first = zipped[0]
    assert first["state"] == [0.0, -2.0, 1.5] and first["state_presence"] == [0, 1, 1]
    assert first["possible_actions_mask"] == [1, 0, 1] and first["next_state"] == [0.25, 0.0, 0.0]
    assert zipped[1]["next_state_presence"] == [0, 0, 0] and zipped[1]["possible_next_actions_mask"] == [0, 0, 0]


def generated_code(spark, df) -> str:
    return spark._jvm.PythonSQLUtils.explainString(df._jdf.queryExecution(), "codegen")


def test_wide_table_code_does_not_grow_with_features_and_actions(spark):
    from pyspark.sql import functions as F

    def table(nf: int, na: int):
        ids = F.sequence(F.lit(0), F.lit(nf - 1)).cast("array<long>")
        actions = F.transform(F.sequence(F.lit(0), F.lit(na - 1)), lambda a: a.cast("string"))
        df = spark.range(20).select(
            F.concat(F.lit("e"), (F.col("id") % 4).cast("string")).alias("mdp_id"),
            F.col("id").alias("sequence_number"), F.lit(1).cast("long").alias("sequence_number_ordinal"),
            F.map_from_arrays(ids, F.transform(ids, lambda i: i.cast("float"))).alias("state_features"),
            (F.col("id") % na).cast("string").alias("action"), F.lit(0.5).alias("action_probability"),
            F.lit(1.0).alias("reward"), actions.alias("possible_actions"),
            F.create_map().cast("map<string,double>").alias("metrics"),
            F.map_from_arrays(ids, F.transform(ids, lambda i: (i + 1).cast("float"))).alias("next_state_features"),
            F.lit("0").alias("next_action"), actions.alias("possible_next_actions"),
            F.lit(1).cast("long").alias("time_diff"), F.col("id").alias("time_since_first"),
            F.lit(True).alias("not_terminal"), F.lit(1.0).alias("n_step_reward"), F.lit(1).cast("long").alias("n_steps"),
        )
        return build_training_table(df, list(range(nf)), [str(a) for a in range(na)])  # auto: zip when wide

    narrow, wide = table(60, 30), table(1000, 500)
    narrow_code, wide_code = generated_code(spark, narrow), generated_code(spark, wide)
    assert len(wide_code) == len(narrow_code)  # the same code whatever the width
    assert re.search(r"maxMethodCodeSize:\d+", wide_code)  # compiled (a failed compile reports no stats)
    first = wide.first()
    assert len(first["state"]) == 1000 and first["state"][999] == 999.0 and sum(first["state_presence"]) == 1000
    assert sum(first["possible_actions_mask"]) == 500 and first["next_state"][0] == 1.0
