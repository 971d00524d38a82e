"""Timeline operator throughput: Spark local[2] against a single-process pyarrow/numpy implementation.

    .venv/bin/python benchmarks/bench_timeline.py [--rows 1000000 10000000] [--no-training-table-above N]
        [--no-baseline-above N] [--repeat N]

A synthetic mdp table shaped like the simulator's (10-step episodes, 24 state features, 10 candidate actions,
3 metrics; one ds partition, rows shuffled within each 500k-row file) is written once per size with pyarrow.
Then, after the Spark session has started and a tiny warm-up run, `run_timeline` (validate + one-step
transitions + split + atomic write) is timed, and (up to --no-training-table-above rows) the dense training table
built from that timeline by preprocessing/training_table.py. The baseline does the same validation, transitions
and split in one process with pyarrow and numpy (no Spark) and writes Parquet; it holds the whole table in memory
(> 16 GB at 10M rows), hence --no-baseline-above. Prints one table: wall seconds, CPU seconds (the Spark JVM's,
or the baseline process's) and logged rows per wall second. The machine is shared: compare CPU seconds.
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

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reagent_recsys.config import SparkConfig, validate_config  # noqa: E402
from reagent_recsys.schema import MDP  # noqa: E402

STEPS, FEATURES, ACTIONS = 10, 24, 10
CHUNK = 500_000


def synthetic_mdp(root: Path, rows: int, seed: int = 0) -> Path:
    """Write `rows` logged steps (rows // 10 episodes) under root/mdp/ds=2026-01-01/, in chunks."""
    rng = np.random.default_rng(seed)
    path = root / "mdp" / "ds=2026-01-01"
    path.mkdir(parents=True)
    schema = pa.schema([f for f in MDP.arrow() if f.name != "ds"])
    actions = pa.array([str(a) for a in range(ACTIONS)])
    for part, start in enumerate(range(0, rows, CHUNK)):
        n = min(CHUNK, rows - start)  # (N,) rows of whole episodes (CHUNK is a multiple of STEPS)
        order = rng.permutation(n)
        episode = (start + np.arange(n)) // STEPS
        keys = np.tile(np.arange(FEATURES, dtype=np.int64), n)  # (N * F,)
        values = rng.random(n * FEATURES, dtype=np.float32)
        offsets = pa.array(np.arange(0, (n + 1) * FEATURES, FEATURES, dtype=np.int32))
        action = rng.integers(0, ACTIONS, n)
        possible = pa.ListArray.from_arrays(
            pa.array(np.arange(0, (n + 1) * ACTIONS, ACTIONS, dtype=np.int32)),
            actions.take(pa.array(np.tile(np.arange(ACTIONS), n))),
        )
        metric_offsets = pa.array(np.arange(0, (n + 1) * 3, 3, dtype=np.int32))
        metrics = pa.MapArray.from_arrays(
            metric_offsets, pa.array(np.tile(["click", "engagement", "satisfaction"], n)), pa.array(rng.random(n * 3))
        )
        table = pa.table(
            {
                "mdp_id": pa.array(np.char.add("user-", episode.astype(str))),
                "sequence_number": pa.array((np.arange(n) % STEPS).astype(np.int64)),
                "state_features": pa.MapArray.from_arrays(offsets, pa.array(keys), pa.array(values)),
                "action": actions.take(pa.array(action)),
                "action_probability": pa.array(np.full(n, 1.0 / ACTIONS)),
                "reward": pa.array(rng.exponential(1.0, n)),
                "possible_actions": possible,
                "metrics": metrics,
            },
            schema=schema,
        ).take(pa.array(order))
        pq.write_table(table, str(path / f"part-{part:05d}.parquet"))
    return root / "mdp"


def baseline_timeline(mdp: Path, out: Path, eval_fraction: float = 0.2) -> int:
    """The same one-step timeline in one process: pyarrow sort + numpy shifts, vectorized, no Spark."""
    table = pq.read_table(str(mdp))
    reward, prob = table["reward"].to_numpy(), table["action_probability"].to_numpy()
    possible = table["possible_actions"].combine_chunks()
    lengths = pc.list_value_length(possible).to_numpy()
    hit = (pc.list_flatten(possible).to_numpy(zero_copy_only=False)
           == np.repeat(table["action"].to_numpy(zero_copy_only=False), lengths))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    in_possible = np.add.reduceat(hit, starts) > 0 if len(hit) else np.zeros(0, bool)
    bad = ~np.isfinite(reward) | ~((prob > 0) & (prob <= 1)) | ~in_possible
    order = pc.sort_indices(table, [("mdp_id", "ascending"), ("sequence_number", "ascending")])
    table = table.take(order)
    bad = bad[order.to_numpy()]
    mdp_id = table["mdp_id"].combine_chunks().dictionary_encode().indices.to_numpy()  # (N,)
    seq = table["sequence_number"].to_numpy()
    same_next = np.zeros(len(seq), bool)
    same_next[:-1] = mdp_id[1:] == mdp_id[:-1]
    duplicate = same_next & (np.roll(seq, -1) == seq)
    if bad.any() or duplicate.any():
        raise ValueError(f"{int(bad.sum())} invalid rows, {int(duplicate.sum())} duplicates")
    first = np.ones(len(seq), bool)
    first[1:] = ~same_next[:-1]
    episode_start = np.maximum.accumulate(np.where(first, np.arange(len(seq)), 0))
    take = pa.array(np.where(same_next, np.arange(len(seq)) + 1, len(seq)))  # row len(seq): the empty value

    def shifted(name: str, empty):
        column = table[name].combine_chunks()
        return pa.concat_arrays([column, pa.array([empty], column.type)]).take(take)

    hashed = pd_hash(table["mdp_id"].combine_chunks())  # (N,) a stable hash, as Spark's xxhash64
    is_eval = (hashed % 1_000_000) < int(eval_fraction * 1_000_000)
    result = table.append_column("sequence_number_ordinal", pa.array(np.arange(len(seq)) - episode_start + 1))
    result = result.append_column("next_state_features", shifted("state_features", []))
    result = result.append_column("next_action", shifted("action", ""))
    result = result.append_column("possible_next_actions", shifted("possible_actions", []))
    time_diff = np.where(same_next, np.roll(seq, -1) - seq, 1)
    result = result.append_column("time_diff", pa.array(time_diff))
    result = result.append_column("time_since_first", pa.array(seq - seq[episode_start]))
    result = result.append_column("not_terminal", pa.array(same_next))
    result = result.append_column("n_step_reward", table["reward"])
    result = result.append_column("n_steps", pa.array(np.ones(len(seq), np.int64)))
    out.mkdir(parents=True)
    pq.write_table(result.filter(pa.array(~is_eval)), str(out / "train.parquet"))
    pq.write_table(result.filter(pa.array(is_eval)), str(out / "eval.parquet"))
    return result.num_rows


def pd_hash(ids: pa.Array) -> np.ndarray:
    import pandas as pd

    return pd.util.hash_array(ids.to_numpy(zero_copy_only=False)).astype(np.uint64)


def jvm_cpu_seconds(spark) -> float:
    """CPU seconds used so far by the Spark JVM (the machine is shared: wall time alone misleads)."""
    pid = spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def spark_run(spark, root: Path, with_training_table: bool) -> tuple[float, float, float | None, float | None]:
    """(timeline wall s, timeline JVM CPU s, training table wall s, training table CPU s)."""
    from preprocessing.timeline_job import run_timeline

    config = validate_config({"output_dir": str(root), "timeline": {"eval_fraction": 0.2}})
    shutil.rmtree(root / "timeline", ignore_errors=True)
    cpu, started = jvm_cpu_seconds(spark), time.perf_counter()
    run_timeline(spark, config)
    timeline_s, timeline_cpu = time.perf_counter() - started, jvm_cpu_seconds(spark) - cpu
    if not with_training_table:
        return timeline_s, timeline_cpu, None, None
    from preprocessing.training_table import build_training_table

    shutil.rmtree(root / "training_table", ignore_errors=True)
    cpu, started = jvm_cpu_seconds(spark), time.perf_counter()
    for split in ("train", "eval"):
        timeline = spark.read.parquet(str(root / "timeline" / split))
        build_training_table(timeline, list(range(FEATURES)), [str(a) for a in range(ACTIONS)]).write.parquet(
            str(root / "training_table" / split)
        )
    return timeline_s, timeline_cpu, time.perf_counter() - started, jvm_cpu_seconds(spark) - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--no-baseline-above", type=int, default=2_000_000,
                        help="Skip the in-memory baseline above this many rows (10M rows need > 16 GB).")
    parser.add_argument("--no-training-table-above", type=int, default=2_000_000,
                        help="Time the training table only up to this many rows (it is the slow part).")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument("--repeat", type=int, default=1, help="Time the Spark stages this many times per size.")
    args = parser.parse_args()
    from preprocessing.spark import get_spark

    with_tt = (ROOT / "preprocessing" / "training_table.py").exists()
    started = time.perf_counter()
    spark = get_spark(SparkConfig(master="local[2]", shuffle_partitions=8, driver_memory=args.driver_memory))
    session_s = time.perf_counter() - started
    warm = Path(tempfile.mkdtemp(prefix="bench_timeline_warm_"))
    synthetic_mdp(warm, 10_000)
    spark_run(spark, warm, with_tt)  # JIT warm-up on a tiny table
    shutil.rmtree(warm)
    lines = []
    for rows in args.rows:
        root = Path(tempfile.mkdtemp(prefix="bench_timeline_"))
        try:
            mdp = synthetic_mdp(root, rows)
            tt = with_tt and rows <= args.no_training_table_above
            for _ in range(args.repeat):
                timeline_s, timeline_cpu, tt_s, tt_cpu = spark_run(spark, root, tt)
                print(f"{rows}: spark timeline {timeline_s:.1f}s ({timeline_cpu:.1f} cpu-s)", file=sys.stderr)
                base_s = base_cpu = None
                if rows <= args.no_baseline_above:
                    cpu, t0 = time.process_time(), time.perf_counter()
                    shutil.rmtree(root / "baseline", ignore_errors=True)
                    baseline_timeline(mdp, root / "baseline")
                    base_s, base_cpu = time.perf_counter() - t0, time.process_time() - cpu
                lines.append((rows, timeline_s, timeline_cpu, tt_s, tt_cpu, base_s, base_cpu))
        finally:
            shutil.rmtree(root, ignore_errors=True)
    spark.stop()

    def fmt(value: float | None, spec: str = ".1f") -> str:
        return "-" if value is None else format(value, spec)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores (shared), python {platform.python_version()}; "
          f"Spark local[2], session start {session_s:.1f}s (not counted); load average {os.getloadavg()[0]:.1f}")
    print(f"{'rows':>11} | {'timeline s':>10} {'cpu s':>6} {'rows/s':>9} | {'+train tbl s':>12} {'cpu s':>6} "
          f"{'total rows/s':>12} | {'pyarrow s':>9} {'cpu s':>6} {'rows/s':>9}")
    for rows, timeline_s, timeline_cpu, tt_s, tt_cpu, base_s, base_cpu in lines:
        total = timeline_s + (tt_s or 0.0)
        print(f"{rows:>11,} | {timeline_s:>10.1f} {timeline_cpu:>6.1f} {rows / timeline_s:>9,.0f} | "
              f"{fmt(tt_s):>12} {fmt(tt_cpu):>6} {rows / total:>12,.0f} | {fmt(base_s):>9} {fmt(base_cpu):>6} "
              f"{fmt(None if base_s is None else rows / base_s, ',.0f'):>9}")

if __name__ == "__main__":
    main()
