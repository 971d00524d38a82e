"""Training-table readers (rows/s) against what the DQN trainer consumes (samples/s), in one run, on CPU.

    .venv/bin/python benchmarks/bench_training.py [--rows 1000000] [--repeats 2] [--threads 1 2]

A synthetic training table of realistic shape (F = 24 features, A = 20 actions, 8 Parquet files, 50k-row row
groups) is written to a temporary directory. Each reader makes full passes with the training defaults (batch
1024, shuffled row groups, 100k-row shuffle buffer) and the tensors are materialized; the trainer runs DoubleDQN
updates (dueling 256-128 MLP, Preprocessor included) on batches already in memory. "arrow, cached epochs" is
the default reader after its first epoch (`training.cache_rows`: decoded row groups kept in memory). Best of `--repeats` (the
machine is shared). Rates are given per wall-clock second and per CPU-second of this process (the latter
moves less with the load of other processes; the reader's includes its read-ahead thread).
Target: the default reader delivers >= 5x what the trainer consumes.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reagent_recsys.config import TrainingConfig  # noqa: E402
from reagent_recsys.data.loaders import LoaderOptions, make_loader  # noqa: E402
from reagent_recsys.data.synthetic import synthetic_normalization, write_synthetic_training_table  # noqa: E402
from reagent_recsys.normalization import Preprocessor  # noqa: E402
from reagent_recsys.training.dqn import build_algorithm  # noqa: E402
from reagent_recsys.training.trainer import ModelSpec  # noqa: E402

F, A, BATCH = 24, 20, 1024


def reader_rate(kind: str, path: Path, repeats: int, cached: bool = False) -> tuple[float, float]:
    """Best rows/s (wall clock) and rows per CPU-second of one full epoch (batches of 1024, default shuffling).

    cached: the arrow reader's later epochs, served from the row groups decoded in the first (unmeasured) one.
    """
    options = LoaderOptions(batch_size=BATCH, shuffle_buffer=100_000, seed=0, cache_rows=10**12 if cached else 0)
    loader = make_loader(kind, path, options)
    if cached:
        for _ in loader.epoch(0):
            pass
    best, best_cpu = 0.0, 0.0
    for epoch in range(int(cached), int(cached) + repeats):
        started, cpu, rows = time.perf_counter(), time.process_time(), 0
        for batch in loader.epoch(epoch):
            rows += len(batch)
        best = max(best, rows / (time.perf_counter() - started))
        best_cpu = max(best_cpu, rows / (time.process_time() - cpu))
    return best, best_cpu


def trainer_rate(path: Path, threads: int, updates: int, repeats: int) -> tuple[float, float]:
    """Best samples/s (wall clock) and samples per CPU-second of DoubleDQN updates on in-memory batches."""
    torch.set_num_threads(threads)
    loader = make_loader("arrow", path, LoaderOptions(batch_size=BATCH, shuffle_buffer=0))
    batches = []
    for batch in loader:
        batches.append(batch)
        if len(batches) == updates:
            break
    config = TrainingConfig()  # defaults: batch 1024, dueling [256, 128], double-Q, huber, Adam
    preprocessor = Preprocessor(synthetic_normalization(list(range(1, F + 1))))
    torch.manual_seed(0)
    algo = build_algorithm(ModelSpec.from_config(config, preprocessor.output_dim, A).build(), preprocessor, config)
    for batch in batches[:3]:  # warm up
        algo.update(batch)
    best, best_cpu = 0.0, 0.0
    for _ in range(repeats):
        started, cpu = time.perf_counter(), time.process_time()
        for batch in batches:
            algo.update(batch)
        best = max(best, len(batches) * BATCH / (time.perf_counter() - started))
        best_cpu = max(best_cpu, len(batches) * BATCH / (time.process_time() - cpu))
    return best, best_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--updates", type=int, default=60)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.system()}, "
          f"python {platform.python_version()}, torch {torch.__version__}, load avg {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train"
        started = time.perf_counter()
        write_synthetic_training_table(path, args.rows, F, A, files=8, row_group_size=50_000)
        print(f"table: {args.rows:,} rows, F={F}, A={A}, written in {time.perf_counter() - started:.1f}s")
        readers = {kind: reader_rate(kind, path, args.repeats) for kind in ("arrow", "petastorm")}
        readers["arrow, cached epochs"] = reader_rate("arrow", path, args.repeats, cached=True)
        trainers = {t: trainer_rate(path, t, args.updates, args.repeats) for t in args.threads}
    best_trainer = max(r[0] for r in trainers.values())
    best_cpu = max(r[1] for r in trainers.values())
    print(f"\n{'what':44s} {'rows/s':>10s} {'x trainer':>9s} {'rows/CPU-s':>11s} {'x trainer':>9s}")
    rows = [(f"reader {kind}", r) for kind, r in readers.items()]
    rows += [(f"trainer DoubleDQN 256-128, {t} thread(s)", r) for t, r in trainers.items()]
    for label, (wall, cpu) in rows:
        print(f"{label:44s} {wall:10,.0f} {wall / best_trainer:9.1f} {cpu:11,.0f} {cpu / best_cpu:9.1f}")


if __name__ == "__main__":
    main()
