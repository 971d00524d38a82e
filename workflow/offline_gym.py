"""Stage 1, ``workflow.offline_gym``: simulate users under a logging policy and write the mdp table.

Episodes run in vectorized batches of ``logging.batch_size`` users. Each batch is one Parquet part file of
``<output_dir>/mdp/ds=<ds>/``; the whole directory is written to a temporary sibling and renamed into place at
the end, so a failed or killed run leaves an earlier table untouched and never a partial one.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from typing import Any

import numpy as np
from tqdm import tqdm

from reagent_recsys.artifacts import atomic_directory, package_versions, write_json_atomic
from reagent_recsys.config import ConfigError, PipelineConfig
from reagent_recsys.envs.base import EnvStep, make_env, run_episodes, slate_size_of
from reagent_recsys.envs.lts import RESPONSE_METRICS
from reagent_recsys.mdp_writer import (
    EpisodeBatch,
    batch_to_arrow,
    check_written,
    clear_caches,
    episode_id_width,
    write_part,
)
from reagent_recsys.policies import LoggingPolicy, build_policy
from reagent_recsys.schema import FEATURES_FILE, MANIFEST_FILE

METRIC_DESCRIPTIONS = {
    "click": "1 if the user clicked the shown item (always 1 in LTS).",
    "engagement": "Engagement (time spent) of the response; equals the reward.",
    "satisfaction": "The user's satisfaction when responding (logged even when it is not a state feature).",
    "policy_component": "Index of the logging-mixture component drawn for the episode (0 for single policies).",
}




def run_batch(env: Any, policy: LoggingPolicy, rng: np.random.Generator, first_episode: int,
              state: np.ndarray) -> EpisodeBatch:
    """Run the episodes of `env` (already reset, initial `state` (B, F)) to their end under `policy`."""
    users = state.shape[0]
    policy.begin_episodes(users, rng)
    log: dict[str, list[np.ndarray]] = {k: [] for k in (
        "states", "actions", "propensities", "rewards", "alive", *RESPONSE_METRICS)}

    def record(step: EnvStep) -> None:
        log["states"].append(step.state)
        log["actions"].append(step.slates[:, 0])
        log["propensities"].append(step.info)
        log["rewards"].append(np.asarray(step.result.reward, dtype=np.float64))
        log["alive"].append(step.alive)
        for name in RESPONSE_METRICS:
            log[name].append(np.asarray(getattr(step.result, name), dtype=np.float64))

    steps = run_episodes(env, state, lambda state, docs: policy.act(docs, rng, state), record)  # slates, mu
    metrics = {name: np.stack(log[name]) for name in RESPONSE_METRICS}
    component = policy.episode_metrics().get("policy_component", np.zeros(users))
    metrics["policy_component"] = np.broadcast_to(np.asarray(component, dtype=np.float64), (steps, users))
    return EpisodeBatch(
        first_episode=first_episode,
        states=np.stack(log["states"]),  # (T, B, F)
        actions=np.stack(log["actions"]),  # (T, B)
        propensities=np.stack(log["propensities"]),
        rewards=np.stack(log["rewards"]),
        metrics=metrics,
        alive=np.stack(log["alive"]),
    )


def features_description(env: Any) -> dict[str, Any]:
    """The `_features.json` payload: what every state feature id, the action and the metrics mean."""
    return {
        "features": [asdict(f) for f in env.features],
        "action": {
            "meaning": "candidate slot index of the first slate item (the item the user responds to)",
            "values": [str(i) for i in range(env.num_actions)],
        },
        "reward": "engagement of the response",
        "metrics": METRIC_DESCRIPTIONS,
    }


def _start_batch(config: PipelineConfig, index: int, rng: np.random.Generator) -> tuple[Any, np.ndarray,
                                                                                  np.random.Generator]:
    """(env, initial state (B, F), policy rng) of batch `index`; its env and policy draw from children of `rng`."""
    env_rng, policy_rng = rng.spawn(2)
    first = index * config.logging.batch_size
    env = make_env(config.env, min(config.logging.batch_size, config.logging.num_episodes - first), env_rng)
    return env, env.reset(), policy_rng


def offline_gym(config: PipelineConfig) -> dict[str, Any]:
    """Simulate `logging.num_episodes` episodes and write `<output_dir>/mdp`; returns a summary."""
    if config.env is None or config.logging is None:
        raise ConfigError("env: workflow.offline_gym simulates users and needs an `env` section (a logs run has "
                          "none: its mdp table comes from your logs)")
    log_cfg = config.logging
    started = time.perf_counter()
    num_batches = -(-log_cfg.num_episodes // log_cfg.batch_size)
    batch_rngs = np.random.default_rng(config.seed).spawn(num_batches)

    # Everything that can fail on bad parameters happens before anything is written.
    env, state, policy_rng = _start_batch(config, 0, batch_rngs[0])
    policy = build_policy(log_cfg.policy, slate_size=slate_size_of(env))
    policy.check_features(env.doc_features)
    policy.bind_state([f.id for f in env.features])  # the state columns are the mdp table's state_features
    feature_ids = np.array([f.id for f in env.features], dtype=np.int64)
    width = episode_id_width(log_cfg.num_episodes)

    rows, total_reward = 0, 0.0
    table_dir = config.paths.mdp
    with atomic_directory(table_dir) as tmp, tqdm(
        total=log_cfg.num_episodes, unit="episode", desc="offline_gym", file=sys.stderr
    ) as progress:
        for i in range(num_batches):
            if i > 0:
                env, state, policy_rng = _start_batch(config, i, batch_rngs[i])
            batch = run_batch(env, policy, policy_rng, i * log_cfg.batch_size, state)
            table = batch_to_arrow(batch, feature_ids, env.num_actions, width)
            write_part(table, tmp, log_cfg.ds, i)
            rows += table.num_rows
            total_reward += float(batch.rewards[batch.alive].sum())
            progress.update(batch.alive.shape[1])
        clear_caches()
        check_written(tmp)
        write_json_atomic(tmp / FEATURES_FILE, features_description(env))
        summary = {
            "table": "mdp",
            "path": str(table_dir),
            "rows": rows,
            "episodes": log_cfg.num_episodes,
            "ds": log_cfg.ds,
            "seed": config.seed,
            "config_hash": config.section_hash("env", "logging"),
            "mean_episode_return": total_reward / log_cfg.num_episodes,
            "seconds": round(time.perf_counter() - started, 3),
        }
        write_json_atomic(tmp / MANIFEST_FILE, {
            **summary, "config": config.model_dump(mode="json"), "package_versions": package_versions(),
        })
    return summary
