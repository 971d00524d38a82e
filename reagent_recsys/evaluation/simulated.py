"""Simulator ground truth for a CPE report: runs only when the config has an `env` (never in a logs run).

* true returns of every TorchScript candidate, the configured logging policy, random, and (when candidates
  have a clickbait score) always-sweetest / always-bitterest, on the same simulated users;
* the true return of each per-epoch checkpoint (the training curve);
* the exact one-step value on the logged contexts when the simulator is LTS and the satisfaction is observed;
* the logging self-check: PDIS / WPDIS of the logging policy as target must equal its logged return.
Action names map to simulator candidate slots here and only here (`action_slots`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from reagent_recsys.config import PipelineConfig
from reagent_recsys.envs.lts import LTSParams
from reagent_recsys.envs.recsim_adapter import slate_size_of
from reagent_recsys.evaluation.cpe import sequential_estimates
from reagent_recsys.evaluation.ground_truth import (
    GroundTruth,
    ServedPolicyActor,
    action_slots,
    baseline_actors,
    document_columns,
    env_factory,
    logging_probabilities,
    one_step_truth,
    simulate,
)
from reagent_recsys.evaluation.inputs import Split
from reagent_recsys.evaluation.progress import QUIET, Progress
from reagent_recsys.evaluation.report import with_truth
from reagent_recsys.policies.logging import build_policy

Scripted = tuple[torch.nn.Module, dict[str, Any]]  # (policy with the exported signature, its metadata)


def logging_self_check(config: PipelineConfig, evaluation: Split, table_ids: Sequence[int],
                       action_names: Sequence[str], env_features: list[Any], num_candidates: int) -> dict[str, Any]:
    """PDIS/WPDIS of the LOGGING policy (as target) on the eval split vs its logged mean return."""
    doc_columns = document_columns(table_ids, env_features, num_candidates)
    policy = build_policy(config.logging.policy)
    slots = action_slots(action_names, num_candidates)
    probs = None if doc_columns is None else logging_probabilities(policy, evaluation["state"], doc_columns, slots,
                                                                    table_ids)
    if probs is None:
        return {"available": False, "why": "the logging policy is history-dependent or the documents are not logged"}
    estimates = sequential_estimates(config.evaluation, config.seed, evaluation, probs, None)
    return {"available": True, "logged_mean_return": estimates[0].baseline,
            "estimates": [e.to_dict() for e in estimates]}


def simulated_truth(config: PipelineConfig, candidates: dict[str, Scripted], evaluation: Split,
                    eval_targets: dict[str, np.ndarray], table_ids: Sequence[int], action_names: Sequence[str],
                    checkpoints: list[tuple[int, torch.nn.Module]], progress: Progress = QUIET) -> dict[str, Any]:
    """Ground truth for `candidates` (TorchScript policies by name) and the baselines, the simulated training
    curve of `checkpoints`, the exact one-step value of each target in `eval_targets` and the self-check."""
    if config.env is None:
        raise ValueError("env: simulator ground truth needs an `env` section")
    cfg = config.evaluation
    make = env_factory(config.env)
    probe = make(1, np.random.default_rng(0))
    env_features, num_candidates = list(probe.features), int(probe.num_actions)
    actors = {}
    for name, (policy, metadata) in candidates.items():
        policy_ids = [int(f) for f in metadata.get("feature_ids", table_ids)]
        actors[name] = ServedPolicyActor(policy, policy_ids, action_names, env_features, num_candidates,
                                         bool(metadata.get("greedy", True)), metadata.get("history"))
    baselines = baseline_actors(config, list(probe.doc_features), slate_size_of(probe), [f.id for f in env_features])
    truth = []
    for name, actor in {**actors, **baselines}.items():
        with progress.step(f"simulating {name}: {cfg.ground_truth_episodes} episodes"):
            returns = simulate(make, actor, cfg.ground_truth_episodes, config.seed, cfg.simulation_batch_size,
                               cfg.gamma)
        truth.append(GroundTruth.from_returns(name, returns))
    curve = []
    first_metadata = next(iter(candidates.values()))[1] if candidates else {}
    curve_ids = [int(f) for f in first_metadata.get("feature_ids", table_ids)]
    if checkpoints:
        with progress.step(f"simulating {len(checkpoints)} checkpoints: {cfg.curve_episodes} episodes each"):
            for epoch, policy in checkpoints:
                actor = ServedPolicyActor(policy, curve_ids, action_names, env_features, num_candidates,
                                          bool(first_metadata.get("greedy", True)), first_metadata.get("history"))
                returns = simulate(make, actor, cfg.curve_episodes, config.seed, cfg.simulation_batch_size,
                                   cfg.gamma)
                curve.append({"epoch": epoch, **GroundTruth.from_returns(f"epoch_{epoch}", returns).to_dict()})
    one_step, note = {}, "the simulator is not the long-term-satisfaction model"
    if config.env.type == "lts" or config.env.recsim_env == "long_term_satisfaction":
        params = LTSParams.from_config(config.env)
        for name, target in eval_targets.items():
            per_context, note = one_step_truth(evaluation["state"], table_ids, target, action_names, params)
            one_step[name] = None if per_context is None else float(per_context.mean())
    return {
        "ground_truth": {"episodes": cfg.ground_truth_episodes, "gamma": cfg.gamma, "seed": config.seed,
                         "policies": [t.to_dict() for t in truth]},
        "one_step_truth": one_step,
        "one_step_truth_note": note if not any(v is not None for v in one_step.values()) else
        "exact E_pi[r | s] = sum_a pi(a|s) exp(mu + sigma^2/2) averaged over the logged eval contexts",
        "training_curve": curve,
        "training_curve_note": "true return of each per-epoch checkpoint found under training/checkpoints "
                               f"(the trainer keeps the newest ones; {cfg.curve_episodes} episodes each, "
                               "the same simulated users)",
        "logging_self_check": logging_self_check(config, evaluation, table_ids, action_names, env_features,
                                                 num_candidates),
    }


def attach_truth(report: dict[str, Any], truth: dict[str, Any]) -> dict[str, Any]:
    """`report` (CPEReport.to_dict()) with the simulator's truth beside every estimate of each policy that has one
    (TorchScript candidates; probability tables cannot act in the simulator) and the ground-truth sections."""
    by_name = {t["name"]: t for t in truth["ground_truth"]["policies"]}
    policies = []
    for policy in report["policies"]:
        sequential = by_name.get(policy["name"], {}).get("mean")
        one_step = truth["one_step_truth"].get(policy["name"])
        policy = {**policy, "truth": {"sequential": sequential, "one_step": one_step}}
        for section, value in (("sequential", sequential), ("one_step", one_step)):
            policy[section] = [with_truth(e, value) for e in policy[section]]
        policies.append(policy)
    return {**report, **truth, "policies": policies, "training_curve_source": "simulator"}
