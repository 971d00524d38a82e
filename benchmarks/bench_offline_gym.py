"""Logged transitions per second of workflow.offline_gym on ONE core, against google recsim's stepping speed.

    .venv/bin/python benchmarks/bench_offline_gym.py [--rows 400000] [--repeats 3]

Each line runs the whole stage (simulate + logging policy + Arrow + Parquet write + manifest) into a temporary
directory, pinned to CPU 0 with one Arrow/BLAS thread, and keeps the best of `--repeats` runs. Rates are given per
wall-clock second and per CPU second of this process (`time.process_time`): on a shared machine the CPU-second
rate is what one dedicated core would do. A breakdown times the three parts of one batch separately. recsim
(benchmarks/bench_recsim_speed.py) runs in the same process on the same core.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
             "TF_NUM_INTEROP_THREADS"):
    os.environ[_var] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {0})

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from reagent_recsys.config import validate_config  # noqa: E402
from reagent_recsys.envs.recsim_adapter import make_env  # noqa: E402
from reagent_recsys.mdp_writer import batch_to_arrow, write_part  # noqa: E402
from reagent_recsys.policies import build_policy  # noqa: E402
from workflow.offline_gym import offline_gym, run_batch  # noqa: E402

pa.set_cpu_count(1)
pa.set_io_thread_count(1)

CASES = [  # (label, preset, policy, batch sizes)
    ("sweet_bitter random", "sweet_bitter", {"type": "random"}, (1024, 4096, 16384)),
    ("sweet_bitter mixture", "sweet_bitter", {"type": "mixture", "components": [
        {"weight": 0.2, "policy": {"type": "greedy"}}, {"weight": 0.8, "policy": {"type": "random"}}]}, (4096,)),
    ("strong random", "strong", {"type": "random"}, (4096,)),
]
STEPS = {"sweet_bitter": 10, "strong": 120}


def stage_rate(preset: str, policy: dict, batch_size: int, rows: int, repeats: int) -> tuple[int, float, float]:
    """(rows written, best rows per wall second, best rows per CPU second) of the whole stage."""
    episodes = max(batch_size, rows // STEPS[preset])
    wall = cpu = 0.0
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as out:
            cfg = validate_config({"output_dir": out, "env": {"preset": preset},
                                   "logging": {"num_episodes": episodes, "batch_size": batch_size, "policy": policy}})
            sys.stderr, saved = open(os.devnull, "w"), sys.stderr  # silence the progress bar
            try:
                started, cpu_started = time.perf_counter(), time.process_time()
                written = offline_gym(cfg)["rows"]
                wall = max(wall, written / (time.perf_counter() - started))
                cpu = max(cpu, written / (time.process_time() - cpu_started))
            finally:
                sys.stderr.close()
                sys.stderr = saved
    return written, wall, cpu


def recsim_rate(steps: int, repeats: int) -> tuple[float, float]:
    """(best steps per wall second, best steps per CPU second) of recsim's LTS env under a random policy."""
    from bench_recsim_speed import recsim_steps_per_second

    wall = cpu = 0.0
    for _ in range(repeats):
        cpu_started = time.process_time()
        wall = max(wall, recsim_steps_per_second(steps))
        cpu = max(cpu, steps / (time.process_time() - cpu_started))  # includes recsim's env construction
    return wall, cpu


def breakdown(batch_size: int, repeats: int) -> dict[str, float]:
    """CPU seconds per million rows of each part of one sweet_bitter batch (best of `repeats`)."""
    cfg = validate_config({"output_dir": "unused", "env": {}, "logging": {"batch_size": batch_size}})
    times: dict[str, float] = {"simulate + policy": 1e9, "arrow arrays": 1e9, "parquet write": 1e9}
    with tempfile.TemporaryDirectory() as out:
        for i in range(repeats):
            rng = np.random.default_rng(i)
            env = make_env(cfg.env, batch_size, rng)
            state = env.reset()
            policy = build_policy(cfg.logging.policy)
            t0 = time.process_time()
            batch = run_batch(env, policy, rng, 0, state)
            t1 = time.process_time()
            table = batch_to_arrow(batch, np.array([f.id for f in env.features]), env.num_actions, 6)
            t2 = time.process_time()
            write_part(table, out, "2026-01-01", i)
            t3 = time.process_time()
            scale = 1e6 / table.num_rows
            for key, dt in zip(times, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                times[key] = min(times[key], dt * scale)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400_000, help="logged transitions per stage run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per line (the best is kept)")
    parser.add_argument("--recsim-steps", type=int, default=20_000, help="recsim steps to time")
    args = parser.parse_args()

    recsim_rate(500, 1)  # warm-up: the tensorflow import
    recsim_wall, recsim_cpu = recsim_rate(args.recsim_steps, args.repeats)

    print(f"one core (CPU 0 of {os.cpu_count()}), best of {args.repeats}; load average at start "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'stage run':<22} {'batch':>6} {'rows':>9} {'rows/wall-s':>12} {'rows/cpu-s':>11} {'x recsim (cpu)':>15}")
    for label, preset, policy, batches in CASES:
        for batch_size in batches:
            rows, wall, cpu = stage_rate(preset, policy, batch_size, args.rows, args.repeats)
            print(f"{label:<22} {batch_size:>6} {rows:>9,} {wall:>12,.0f} {cpu:>11,.0f} {cpu / recsim_cpu:>15.1f}",
                  flush=True)
    print(f"{'recsim LTS, 1 env':<22} {'':>6} {args.recsim_steps:>9,} {recsim_wall:>12,.0f} {recsim_cpu:>11,.0f} "
          f"{1.0:>15.1f}")
    print("\nbreakdown, sweet_bitter random, batch 4096 (CPU seconds per million rows):")
    for part, seconds in breakdown(4096, args.repeats).items():
        print(f"  {part:<20} {seconds:6.2f}")


if __name__ == "__main__":
    main()
