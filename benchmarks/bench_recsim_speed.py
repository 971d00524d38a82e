"""google recsim's stepping speed: the slow reference our vectorized simulator is compared against.

    .venv/bin/python benchmarks/bench_recsim_speed.py [--steps 100000] [--users 256]

`recsim_steps_per_second` (imported by the logging benchmark) times recsim's own long_term_satisfaction env
(`create_environment`, 10 candidates, slate size 1, documents resampled every step) under a uniformly random
policy, resetting at episode ends. The table adds our adapter (`RecsimVectorEnv`, B recsim envs behind the
VectorLTS interface) to show its overhead. Timings exclude the one-off recsim/tensorflow import.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def recsim_steps_per_second(num_steps: int) -> float:
    """Steps per second of recsim's LTS env (random policy, one env, resets included)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from recsim.environments import long_term_satisfaction

    env = long_term_satisfaction.create_environment(
        {"num_candidates": 10, "slate_size": 1, "resample_documents": True, "seed": 0}
    )
    np.random.seed(0)  # recsim's user model draws from the global RNG
    actions = np.random.default_rng(0).integers(0, 10, size=(num_steps, 1))  # (T, 1) random slates
    env.reset()
    started = time.perf_counter()
    for slate in actions:
        _, _, done, _ = env.step(slate)
        if done:
            env.reset()
    return num_steps / (time.perf_counter() - started)


def adapter_steps_per_second(num_steps: int, num_users: int) -> tuple[int, float]:
    """(user-steps run, user-steps per second) of RecsimVectorEnv (recsim preset, random policy, whole episodes)."""
    from reagent_recsys.config import EnvConfig
    from reagent_recsys.envs.recsim_adapter import RecsimVectorEnv

    rng = np.random.default_rng(0)
    env = RecsimVectorEnv(EnvConfig(type="recsim", preset="recsim"), num_users, rng)
    done_steps = 0
    started = time.perf_counter()
    while done_steps < num_steps:
        env.reset()
        while env.active.any():
            env.step(rng.integers(0, env.num_actions, size=num_users))
            done_steps += num_users
    return done_steps, done_steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000, help="steps to time")
    parser.add_argument("--users", type=int, default=256, help="users of the adapter run")
    args = parser.parse_args()
    recsim_steps_per_second(1000)  # warm-up: the tensorflow import
    rows = [
        ("recsim LTS env, 1 user", args.steps, recsim_steps_per_second(args.steps)),
        (f"RecsimVectorEnv, {args.users} users", *adapter_steps_per_second(args.steps, args.users)),
    ]
    print(f"{'simulator':<32} {'steps':>9} {'steps/s':>10}")
    for name, steps, speed in rows:
        print(f"{name:<32} {steps:>9,} {speed:>10,.0f}")


if __name__ == "__main__":
    main()
