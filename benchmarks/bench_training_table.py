"""Training-table cost against width: narrow (24 features x 10 actions) to wide (1,000 features x 500 actions).

    python benchmarks/bench_training_table.py [--cases 200000x24x10 20000x200x100 10000x1000x500 20000x1000x500]
        [--formulations auto lookup zip] [--lookup-max-width 300] [--repeat 1]

For each case ROWSxFEATURESxACTIONS a synthetic timeline (every feature present in the state and next-state maps,
every action possible, 10-step episodes) is written to Parquet once; then `build_training_table` is timed per
formulation (written to Parquet, both maps and both masks densified). The per-id `lookup` formulation is skipped
above --lookup-max-width features + actions (its code fails to compile and its cost grows as features x map
entries). Prints wall seconds, Spark JVM CPU seconds and CPU seconds per million values (rows x (features +
actions)), and how many `CodeGenerator` errors Spark logged per run: the JVM's stderr goes to a temporary file
that is scanned after each run. The machine is shared: compare CPU seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.bench_timeline import jvm_cpu_seconds  # noqa: E402
from reagent_recsys.config import SparkConfig  # noqa: E402


def write_timeline(spark, path: str, rows: int, features: int, actions: int) -> None:
    """A synthetic timeline (TIMELINE columns) with full state maps and every action possible."""
    from pyspark.sql import functions as F

    ids = F.sequence(F.lit(0), F.lit(features - 1)).cast("array<long>")
    values = F.transform(ids, lambda i: (F.rand(1) + i).cast("float"))
    names = F.transform(F.sequence(F.lit(0), F.lit(actions - 1)), lambda a: a.cast("string"))
    spark.range(rows).select(
        F.concat(F.lit("e"), (F.col("id") / 10).cast("long").cast("string")).alias("mdp_id"),
        (F.col("id") % 10).alias("sequence_number"), (F.col("id") % 10 + 1).alias("sequence_number_ordinal"),
        F.map_from_arrays(ids, values).alias("state_features"),
        (F.col("id") % actions).cast("string").alias("action"), F.lit(0.1).alias("action_probability"),
        F.lit(1.0).alias("reward"), names.alias("possible_actions"),
        F.create_map().cast("map<string,double>").alias("metrics"),
        F.map_from_arrays(ids, values).alias("next_state_features"),
        ((F.col("id") + 1) % actions).cast("string").alias("next_action"), names.alias("possible_next_actions"),
        F.lit(1).cast("long").alias("time_diff"), (F.col("id") % 10).alias("time_since_first"),
        (F.col("id") % 10 != 9).alias("not_terminal"), F.lit(1.0).alias("n_step_reward"),
        F.lit(1).cast("long").alias("n_steps"),
    ).write.mode("overwrite").parquet(path)


def codegen_errors(log: Path, offset: int) -> tuple[int, int]:
    """(CodeGenerator error lines in the JVM log after `offset`, the new offset)."""
    text = log.read_bytes()[offset:].decode(errors="replace")
    return sum(1 for line in text.splitlines() if "ERROR CodeGenerator" in line), offset + len(text.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["200000x24x10", "20000x200x100", "10000x1000x500",
                                                       "20000x1000x500"])
    parser.add_argument("--formulations", nargs="+", default=["lookup", "zip"])
    parser.add_argument("--lookup-max-width", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--driver-memory", default="3g")
    args = parser.parse_args()

    # The JVM inherits fd 2: send it to a file we can scan for code-generation errors.
    log = Path(tempfile.mkstemp(prefix="bench_training_table_jvm_", suffix=".log")[1])
    real_stderr = os.dup(2)
    os.dup2(os.open(str(log), os.O_WRONLY | os.O_APPEND), 2)
    report = os.fdopen(real_stderr, "w", buffering=1)

    from preprocessing.spark import get_spark
    from preprocessing.training_table import build_training_table

    spark = get_spark(SparkConfig(master="local[2]", shuffle_partitions=8, driver_memory=args.driver_memory))
    work = Path(tempfile.mkdtemp(prefix="bench_training_table_"))
    offset = 0
    lines = []
    try:
        warm = str(work / "warm")
        write_timeline(spark, warm, 20_000, 24, 10)
        for formulation in ("lookup", "zip"):  # JIT warm-up of both formulations
            build_training_table(spark.read.parquet(warm), list(range(24)), [str(a) for a in range(10)],
                                 formulation).write.mode("overwrite").parquet(str(work / "warm_out"))
        _, offset = codegen_errors(log, 0)
        for case in args.cases:
            rows, features, actions = (int(x) for x in case.split("x"))
            path = str(work / case)
            write_timeline(spark, path, rows, features, actions)
            for _ in range(args.repeat):
                for formulation in args.formulations:
                    if formulation == "lookup" and features + actions > args.lookup_max_width:
                        continue
                    shutil.rmtree(work / "out", ignore_errors=True)
                    cpu, started = jvm_cpu_seconds(spark), time.perf_counter()
                    build_training_table(spark.read.parquet(path), list(range(features)),
                                         [str(a) for a in range(actions)], formulation).write.parquet(
                        str(work / "out"))
                    wall, cpu = time.perf_counter() - started, jvm_cpu_seconds(spark) - cpu
                    errors, offset = codegen_errors(log, offset)
                    per_million = cpu / (rows * (features + actions) / 1e6)
                    lines.append((rows, features, actions, formulation, wall, cpu, per_million, errors))
                    print(f"{case} {formulation}: {wall:.1f}s, {cpu:.1f} cpu-s, {per_million:.2f} cpu-s/M values, "
                          f"{errors} codegen errors", file=report)
            shutil.rmtree(path, ignore_errors=True)
    finally:
        spark.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (shared), python {platform.python_version()}; "
          f"Spark local[2]; load average {os.getloadavg()[0]:.1f}")
    print(f"{'rows':>8} {'features':>8} {'actions':>7} {'formulation':>11} | {'wall s':>7} {'cpu s':>7} "
          f"{'cpu s/M values':>14} | {'codegen errors':>14}")
    for rows, features, actions, formulation, wall, cpu, per_million, errors in lines:
        print(f"{rows:>8,} {features:>8} {actions:>7} {formulation:>11} | {wall:>7.1f} {cpu:>7.1f} "
              f"{per_million:>14.2f} | {errors:>14}")
    log.unlink()


if __name__ == "__main__":
    main()
