"""The closed loop on the simulator: simulated users call the live server over HTTP, and the safe-improvement rule.

``run_episodes`` steps a batch of simulated users in lockstep: each step is one /v1/act request carrying the
decisions of every user still active (state features by the served policy's names), the simulator applies the
served actions, and one /v1/feedback request posts the rewards. ``bootstrap_export`` writes the loop's first
policy: Q = 0 everywhere, so served with epsilon 1 it is exactly the uniform random logger.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from reagent_recsys.artifacts import atomic_directory, package_versions
from reagent_recsys.config import EnvConfig
from reagent_recsys.envs.recsim_adapter import make_env
from reagent_recsys.export import METADATA_FILE, ExportedPolicy, metadata_dict, script_policy
from reagent_recsys.normalization import (
    CONTINUOUS,
    NormalizationArtifact,
    NormalizationParameters,
    Preprocessor,
)
from reagent_recsys.serving.process import Client
from reagent_recsys.training.networks import DQNModel

MAX_STEPS = 100_000


def bootstrap_export(env: EnvConfig, export_dir: Path) -> dict[str, Any]:
    """A policy with Q = 0 for every action over the simulator's features (identity normalization)."""
    probe = make_env(env, 1, np.random.default_rng(0))
    ids = [f.id for f in probe.features]
    artifact = NormalizationArtifact(ids, {f: NormalizationParameters(CONTINUOUS) for f in ids},
                                     names={f.id: f.name for f in probe.features})
    model = DQNModel(artifact.output_dim, probe.num_actions, [8])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
    metadata = metadata_dict(ids, artifact.names, [str(a) for a in range(probe.num_actions)], artifact.to_json(),
                             {}, {}, package_versions(), bootstrap="Q = 0: uniform when served with epsilon 1")
    with atomic_directory(export_dir) as tmp:
        torch.jit.save(script_policy(ExportedPolicy(Preprocessor(artifact), model)), str(tmp / "policy.pt"),
                       _extra_files={METADATA_FILE: json.dumps(metadata)})
        (tmp / METADATA_FILE).write_text(json.dumps(metadata))
    return metadata


def run_episodes(client: Client, env: EnvConfig, metadata: dict[str, Any], episodes: int, batch_size: int,
                 seed: int, prefix: str) -> np.ndarray:
    """Simulate `episodes` users served by the server behind `client`; returns their (episodes,) returns.

    Users are stepped `batch_size` at a time; session ids are f"{prefix}-{episode:07d}". Every user's state is
    sent by the names of `metadata` (the served export's), features the simulator lacks left out.
    """
    names_by_id = dict(zip(metadata["feature_ids"], metadata["feature_names"], strict=True))
    returns = []
    with tqdm(total=episodes, unit="episode", desc=f"serve {prefix}", file=sys.stderr) as progress:
        for index, start in enumerate(range(0, episodes, batch_size)):
            users = min(batch_size, episodes - start)
            sim = make_env(env, users, np.random.default_rng([seed, index]))
            state = sim.reset()
            columns = [(i, names_by_id[f.id]) for i, f in enumerate(sim.features) if f.id in names_by_id]
            sessions = [f"{prefix}-{start + u:07d}" for u in range(users)]
            alive = np.ones(users, dtype=bool)
            total = np.zeros(users)
            for t in range(MAX_STEPS):
                active = np.flatnonzero(alive)
                values = state[active][:, [i for i, _ in columns]].tolist()
                names = [n for _, n in columns]
                decisions = [{"session_id": sessions[u], "step": t, "context": dict(zip(names, row, strict=True))}
                             for u, row in zip(active.tolist(), values, strict=True)]
                status, answer = client.post("/v1/act", {"decisions": decisions})
                if status != 200:
                    raise RuntimeError(f"/v1/act answered {status}: {answer}")
                slots = np.zeros(users, dtype=np.int64)
                slots[active] = [int(d["action"]) for d in answer["decisions"]]
                result = sim.step(slots[:, None])
                reward = np.asarray(result.reward, dtype=np.float64)
                feedback = [{"decision_id": d["decision_id"], "reward": float(reward[u]),
                             "metrics": {"engagement": float(result.engagement[u]),
                                         "satisfaction": float(result.satisfaction[u])}}
                            for u, d in zip(active.tolist(), answer["decisions"], strict=True)]
                status, joined = client.post("/v1/feedback", {"feedback": feedback})
                if status != 200:
                    raise RuntimeError(f"/v1/feedback answered {status}: {joined}")
                total[active] += reward[active]
                alive &= ~np.asarray(result.done, dtype=bool)
                state = result.state
                if not alive.any():
                    break
            returns.append(total)
            progress.update(users)
    return np.concatenate(returns)


def should_promote(candidate_lower: float | None, incumbent_estimate: float) -> bool:
    """The safe-improvement rule: ship the candidate only if its CPE lower bound beats the incumbent's estimate."""
    return candidate_lower is not None and candidate_lower > incumbent_estimate
