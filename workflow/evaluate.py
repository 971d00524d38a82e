"""workflow.evaluate: CPE of the served policy on the eval split, simulator ground truth, report.json + report.png.

1. The exported TorchScript policy (exactly what is served) gives the target probabilities on the eval split:
   one-hot of its greedy action when ``metadata["greedy"]``, else its softmax probabilities (the served mode).
2. One-step CPE (DM, IPS, SNIPS, DR, Switch-DR; reward model fit on the train split) and sequential CPE (PDIS,
   WPDIS, FQE, DR, WDR, MAGIC; FQE fit on the train split) with ``evaluation.gamma``. FQE always learns from
   1-step transitions rebuilt from the table's rows (its next_state is n steps ahead when
   ``timeline.multi_steps > 1``, which would value the logging policy). Intervals of the model-based estimators
   include the model's fitting error: see ``INTERVAL_METHOD``. Both models see the state plus episode-history
   features (``evaluation.history_decays``, `add_model_state`): without them a latent user state cannot be valued.
3. Ground truth: the served policy, the logging policy, random, always-sweetest and always-bitterest run in the
   simulator (same users for all: common random numbers); the exact one-step value on the logged contexts when
   the satisfaction is observed.
4. The true return of every per-epoch checkpoint (the training curve).
Everything lands in ``<output_dir>/evaluation/`` in one atomic rename.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reagent_recsys.config import PipelineConfig
from reagent_recsys.data.loaders import read_split_arrays, read_table_metadata
from reagent_recsys.envs.lts import LTSParams
from reagent_recsys.envs.recsim_adapter import slate_size_of
from reagent_recsys.evaluation import (
    BanditData,
    BootstrapSpec,
    EpisodeData,
    Estimate,
    evaluate_one_step,
    evaluate_sequential,
    fqe_settings,
)
from reagent_recsys.evaluation.bootstrap import combine_model_fits
from reagent_recsys.evaluation.fqe import (
    FittedQ,
    fit_fqe_ensemble,
    fit_plan,
    fit_reward_model_ensemble,
    next_step_index,
)
from reagent_recsys.evaluation.ground_truth import (
    GroundTruth,
    ServedPolicyActor,
    action_slots,
    baseline_actors,
    document_columns,
    env_factory,
    feature_columns,
    ground_truth_table,
    logging_probabilities,
    one_step_truth,
    simulate,
)
from reagent_recsys.evaluation.history import StateLayout, history_features
from reagent_recsys.evaluation.magic import magic_blend
from reagent_recsys.evaluation.one_step import dm_terms, dr_terms, switch_dr_terms
from reagent_recsys.evaluation.report import with_truth, write_report
from reagent_recsys.evaluation.sequential import doubly_robust_terms, wdr_statistic
from reagent_recsys.export import METADATA_FILE, ExportedPolicy
from reagent_recsys.policies.logging import build_policy

Split = dict[str, np.ndarray]
MODEL_STATE = "model_state"  # (N, F + H) the state and its episode-history features (`add_model_state`)
RELATIVE = {
    "one_step": "estimate / mean logged one-step reward of the eval split (1.0 = as good as the logging policy)",
    "sequential": "estimate / mean logged discounted (gamma) episode return of the eval split "
                  "(1.0 = as good as the logging policy)",
}
INTERVAL_METHOD = (
    "percentile bootstrap over eval contexts/episodes (model held fixed); the model-based estimators (DM, DR, "
    "Switch-DR, FQE, sequential DR, WDR, MAGIC) then combine M = K + 1 model fits by Rubin's rules: the reward "
    "model / FQE is refit on K bootstrap resamples of the TRAIN episodes (from scratch with its own seed when "
    "model_refit_fraction is 1, else warm-started from the main fit), the estimator is evaluated with each fit, "
    "the value is their mean, and each half-width h becomes t_nu * sqrt(W + (1 + 1/M) B) with W = (h / z)^2, "
    "B the variance of the M values and nu = (M - 1)(1 + W / ((1 + 1/M) B))^2; model_spread = sqrt(B) and "
    "model_fits = M in each estimate"
)


# ------------------------------------------------------------------------------------------ inputs
def read_split(path: Path) -> Split:
    """One split of the training table as flat numpy arrays (checked); rewards and propensities in float64."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no training table split; run workflow.training_table first")
    split = read_split_arrays(path)
    if len(split["action"]) == 0:
        raise ValueError(f"{path}: the split is empty; nothing to evaluate (check timeline.eval_fraction)")
    return split


def state_layout(table_ids: list[int], env_features: list[Any], action_names: list[str],
                 num_candidates: int) -> StateLayout:
    """Which table columns are context features and which hold each action's candidate features (by the env's
    feature descriptions); actions without features (or unlogged ones) leave only the context."""
    doc_columns = document_columns(table_ids, env_features, num_candidates)
    slots = action_slots(action_names, num_candidates)
    if doc_columns is None or (slots < 0).any():
        return StateLayout.from_candidates(len(table_ids), None)
    return StateLayout.from_candidates(len(table_ids), np.stack([cols[slots] for cols in doc_columns.values()]))


def add_model_state(split: Split, layout: StateLayout, decays: list[float]) -> Split:
    """The split with MODEL_STATE: what FQE and the reward model see, the state and its history features."""
    steps = layout.step_inputs(split["state"], split["action"], split["possible_actions_mask"].shape[1])
    history = history_features(split["mdp_key"], split["sequence_number"], steps, decays)
    return {**split, MODEL_STATE: np.concatenate([split["state"].astype(np.float32), history], axis=1)}


def network_layout(config: PipelineConfig, layout: StateLayout | None, width: int) -> StateLayout | None:
    """The FQE / reward-model network's layout over the `width` model-state columns (``evaluation.fqe_model``):
    per candidate when the table's `layout` has candidate features (history columns count as context); None:
    one output per action. What `one_step_cpe` and `sequential_cpe` take as `network`."""
    has_candidates = layout is not None and layout.candidate_columns is not None
    if config.evaluation.fqe_model == "per_candidate" and not has_candidates:
        raise ValueError("evaluation.fqe_model: per_candidate needs every action's candidate features in the state "
                         "(the env's document features, logged for every slot); use auto or per_action")
    if config.evaluation.fqe_model == "per_action" or not has_candidates:
        return None
    return StateLayout.from_candidates(width, layout.candidate_columns)


def model_state(split: Split) -> np.ndarray:
    """What FQE and the reward model see: MODEL_STATE when `add_model_state` made it, else the logged state."""
    return split[MODEL_STATE] if MODEL_STATE in split else split["state"]


def load_served_policy(export_dir: Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """The exported TorchScript policy and its metadata."""
    path = export_dir / "policy.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no exported policy; run workflow.export first")
    return torch.jit.load(str(path)), json.loads((export_dir / METADATA_FILE).read_text())


def align(split: Split, prefix: str, table_ids: list[int], policy_ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The split's `<prefix>state` and presence (N, F_table) -> (N, F_policy) in the policy's feature order, by id."""
    index, present = feature_columns(policy_ids, table_ids)
    state = np.where(present, split[f"{prefix}state"][:, index], 0.0).astype(np.float32)
    presence = np.where(present, split[f"{prefix}state_presence"][:, index], False)
    return state, presence


@torch.no_grad()
def policy_probabilities(policy: Any, state: np.ndarray, presence: np.ndarray, mask: np.ndarray, greedy: bool,
                         batch_size: int = 65536) -> np.ndarray:
    """(N, A) target probabilities in the served mode: one-hot of the greedy action, or the softmax.

    Rows with no possible action (terminal next states) are evaluated with every action possible.
    """
    mask = np.where(mask.any(axis=1, keepdims=True), mask, True)  # (N, A)
    chunks = []
    for i in range(0, len(state), batch_size):
        out = policy(torch.from_numpy(state[i:i + batch_size]), torch.from_numpy(presence[i:i + batch_size]),
                     torch.from_numpy(mask[i:i + batch_size]))
        if greedy:
            chunks.append(np.eye(mask.shape[1])[out["action"].numpy()])
        else:
            chunks.append(out["action_probabilities"].double().numpy())
    return np.concatenate(chunks)


# --------------------------------------------------------------------------------------------- CPE
def one_step_cpe(config: PipelineConfig, train: Split, evaluation: Split, target: np.ndarray,
                 timings: dict[str, float] | None = None, network: StateLayout | None = None) -> list[Estimate]:
    """DM, IPS, SNIPS, DR, Switch-DR on the eval split; the reward model is fit on the train split.

    DM, DR and Switch-DR intervals include the reward model's error (``INTERVAL_METHOD``); `timings` receives
    the seconds of the main fit and of the refits.
    """
    cfg = config.evaluation
    num_actions = target.shape[1]
    settings = {"hidden_sizes": tuple(cfg.fqe_hidden_sizes), "learning_rate": cfg.fqe_learning_rate,
                "batch_size": cfg.fqe_batch_size, "layout": network}

    def fit(row_sets: list[np.ndarray], seeds: list[int], epochs: int, init: FittedQ | None = None) -> list[FittedQ]:
        return fit_reward_model_ensemble(model_state(train), train["action"], train["reward"], num_actions,
                                         row_sets=row_sets, seeds=seeds, epochs=epochs, init=init,
                                         progress="reward model", **settings)

    def bandit(model: FittedQ) -> BanditData:
        return BanditData(evaluation["action"], evaluation["action_probability"], evaluation["reward"], target,
                          reward_predictions=model.q_values(model_state(evaluation)),
                          possible_action_mask=evaluation["possible_actions_mask"])

    clock = time.perf_counter()
    row_sets, seeds = fit_plan(train["mdp_key"], cfg.model_bootstrap_fits, config.seed)
    refit_epochs = max(1, round(cfg.reward_model_epochs * cfg.model_refit_fraction))
    if cfg.model_refit_fraction >= 1:  # independent fits: all M together
        model, *refits = fit(row_sets, seeds, cfg.reward_model_epochs)
    else:  # refits warm-started from the main fit
        (model,) = fit(row_sets[:1], seeds[:1], cfg.reward_model_epochs)
        refits = fit(row_sets[1:], seeds[1:], refit_epochs, model) if len(row_sets) > 1 else []
    fit_seconds = time.perf_counter() - clock
    estimates = evaluate_one_step(bandit(model), BootstrapSpec.from_config(cfg, config.seed), cfg.switch_tau)
    values: dict[str, list[float]] = {"DM": [], "DR": [], "Switch-DR": []}
    for refit in refits:
        data = bandit(refit)
        values["DM"].append(float(dm_terms(data).mean()))
        values["DR"].append(float(dr_terms(data).mean()))
        values["Switch-DR"].append(float(switch_dr_terms(data, cfg.switch_tau).mean()))
    if timings is not None:
        timings.update(reward_model_fits=fit_seconds)
    return [combine_model_fits(e, values[e.name], cfg.confidence_level) if e.name in values else e
            for e in estimates]


def fqe_transitions(train: Split, train_target: np.ndarray) -> dict[str, np.ndarray]:
    """1-step FQE transitions rebuilt from the train split's rows (every logged step, any order).

    s' is the model state (`model_state`) of the episode's next row, r the one-step `reward`, pi(.|s') the
    target on that row (so restricted to its possible actions); the episode's last row is terminal. Unlike the
    table's n-step next_state, whose target would follow the logged actions for n - 1 steps.
    """
    nxt, live = next_step_index(train["mdp_key"], train["sequence_number"])
    return {"state": model_state(train), "action": train["action"], "reward": train["reward"],
            "next_state": model_state(train)[nxt], "not_terminal": live, "next_target_probs": train_target[nxt]}


def model_based_values(data: EpisodeData, num_j_steps: int, seed: int) -> dict[str, float]:
    """Point values of FQE (the model's value), DR, WDR and MAGIC on `data` (no resampling)."""
    q, v = data.model_terms()
    wdr = wdr_statistic(data.w, data.w_prev, data.r, q, v, data.discount)(np.ones((1, data.num_episodes)))
    return {"FQE": float(v[:, 0].mean()), "DR": float(doubly_robust_terms(data).mean()), "WDR": float(wdr[0]),
            "MAGIC": magic_blend(data, num_j_steps, seed).value}


def sequential_cpe(config: PipelineConfig, train: Split, evaluation: Split, target: np.ndarray,
                   train_target: np.ndarray | None, timings: dict[str, float] | None = None,
                   network: StateLayout | None = None) -> list[Estimate]:
    """PDIS, WPDIS and (with `train_target`, pi(.|s) on the train split) FQE, DR, WDR, MAGIC.

    FQE learns from 1-step transitions (`fqe_transitions`); FQE, DR, WDR and MAGIC intervals include its error
    (``INTERVAL_METHOD``); `timings` receives the seconds of the main fit and of the refits.
    """
    cfg = config.evaluation

    def episodes(q_estimates: np.ndarray | None) -> EpisodeData:
        return EpisodeData.from_flat(evaluation["mdp_key"], evaluation["sequence_number"], evaluation["action"],
                                     evaluation["action_probability"], evaluation["reward"], target, cfg.gamma,
                                     q_estimates=q_estimates,
                                     possible_action_mask=evaluation["possible_actions_mask"])

    spec = BootstrapSpec.from_config(cfg, config.seed)
    if train_target is None:
        return evaluate_sequential(episodes(None), spec, cfg.magic_num_j_steps)
    transitions = fqe_transitions(train, train_target)

    def fit(row_sets: list[np.ndarray], seeds: list[int], iterations: int,
            init: FittedQ | None = None) -> list[FittedQ]:
        arrays = [transitions[k] for k in ("state", "action", "reward", "next_state", "not_terminal",
                                           "next_target_probs")]
        return fit_fqe_ensemble(*arrays, cfg.gamma, row_sets=row_sets, seeds=seeds, init=init,
                                **{**fqe_settings(cfg), "iterations": iterations}, layout=network, progress="FQE")

    clock = time.perf_counter()
    row_sets, seeds = fit_plan(train["mdp_key"], cfg.model_bootstrap_fits, config.seed)
    refit_iterations = max(1, round(cfg.fqe_iterations * cfg.model_refit_fraction))
    if cfg.model_refit_fraction >= 1:  # independent fits: all M together
        fqe, *refits = fit(row_sets, seeds, cfg.fqe_iterations)
    else:  # refits warm-started from the main fit
        (fqe,) = fit(row_sets[:1], seeds[:1], cfg.fqe_iterations)
        refits = fit(row_sets[1:], seeds[1:], refit_iterations, fqe) if len(row_sets) > 1 else []
    fit_seconds = time.perf_counter() - clock
    estimates = evaluate_sequential(episodes(fqe.q_values(model_state(evaluation))), spec, cfg.magic_num_j_steps)
    values: dict[str, list[float]] = {}
    for refit in refits:
        point = model_based_values(episodes(refit.q_values(model_state(evaluation))), cfg.magic_num_j_steps,
                                   spec.seed)
        for name, value in point.items():
            values.setdefault(name, []).append(value)
    if timings is not None:
        timings.update(fqe_fits=fit_seconds)
    return [combine_model_fits(e, values[e.name], cfg.confidence_level) if e.name in values else e
            for e in estimates]


# -------------------------------------------------------------------------------------- the stage
def checkpoint_policies(out: Path, metadata: dict[str, Any]) -> list[tuple[int, ExportedPolicy]]:
    """(epoch, policy with the exported signature) for each per-epoch checkpoint under training/checkpoints."""
    from reagent_recsys.normalization import NormalizationArtifact, Preprocessor
    from reagent_recsys.training.trainer import CHECKPOINT_RE, ModelSpec, load_checkpoint

    paths = sorted(p for p in (out / "training" / "checkpoints").glob("epoch_*.pt") if CHECKPOINT_RE.match(p.name))
    if not paths:
        return []
    artifact = NormalizationArtifact.load(out / "normalization.json")
    if list(artifact.feature_ids) != [int(f) for f in metadata["feature_ids"]]:
        raise ValueError(f"{out / 'normalization.json'}: feature_ids differ from the exported policy's; "
                         "rerun workflow.export")
    policies = []
    for path in paths:
        state = load_checkpoint(path)
        model = ModelSpec(**state["spec"]).build()
        model.load_state_dict(state["model"])
        policy = ExportedPolicy(Preprocessor(artifact), model.eval(), metadata["export_config"]["temperature"],
                                metadata["training_config"].get("bcq_threshold", 0.0)).eval()
        policies.append((int(state["epoch"]), policy))
    return policies


def logging_self_check(config: PipelineConfig, evaluation: Split, table_ids: list[int], action_names: list[str],
                       env_features: list[Any], num_candidates: int) -> dict[str, Any]:
    """PDIS/WPDIS of the LOGGING policy (as target) on the eval split vs its logged mean return."""
    doc_columns = document_columns(table_ids, env_features, num_candidates)
    policy = build_policy(config.logging.policy)
    slots = action_slots(action_names, num_candidates)
    probs = None if doc_columns is None else logging_probabilities(policy, evaluation["state"], doc_columns, slots)
    if probs is None:
        return {"available": False, "why": "the logging policy is history-dependent or the documents are not logged"}
    estimates = sequential_cpe(config, {}, evaluation, probs, None)
    return {"available": True, "logged_mean_return": estimates[0].baseline,
            "estimates": [e.to_dict() for e in estimates]}


def evaluate(config: PipelineConfig) -> dict[str, Any]:
    """Run CPE and the simulator ground truth for the exported policy; write <output_dir>/evaluation."""
    started = time.perf_counter()
    cfg, out = config.evaluation, Path(config.output_dir)
    policy, metadata = load_served_policy(out / "export")
    greedy = bool(metadata.get("greedy", True))
    policy_ids = [int(f) for f in metadata["feature_ids"]]
    action_names = [str(a) for a in metadata["action_names"]]
    table_dir = out / "training_table"
    manifest = read_table_metadata(table_dir / "eval")
    table_ids = [int(f) for f in manifest["feature_ids"]]
    if [str(a) for a in manifest["action_names"]] != action_names:
        raise ValueError(f"{table_dir}: action_names {manifest['action_names'][:10]} differ from the exported "
                         f"policy's {action_names[:10]}; rerun workflow.train and workflow.export")
    train, evaluation = read_split(table_dir / "train"), read_split(table_dir / "eval")
    make = env_factory(config.env)
    probe = make(1, np.random.default_rng(0))
    env_features, num_candidates = list(probe.features), int(probe.num_actions)
    layout = state_layout(table_ids, env_features, action_names, num_candidates)
    train, evaluation = (add_model_state(split, layout, cfg.history_decays) for split in (train, evaluation))
    network = network_layout(config, layout, model_state(train).shape[1])

    # 1-2. target probabilities in the served mode, then CPE.
    target = policy_probabilities(policy, *align(evaluation, "", table_ids, policy_ids),
                                  evaluation["possible_actions_mask"], greedy)
    train_target = policy_probabilities(policy, *align(train, "", table_ids, policy_ids),
                                        train["possible_actions_mask"], greedy)
    cpe_started, timings = time.perf_counter(), {}
    one_step = one_step_cpe(config, train, evaluation, target, timings, network)
    sequential = sequential_cpe(config, train, evaluation, target, train_target, timings, network)
    timings["cpe_total"] = time.perf_counter() - cpe_started

    # 3-4. ground truth in the simulator, and the training curve.
    batch = cfg.simulation_batch_size
    served = ServedPolicyActor(policy, policy_ids, action_names, env_features, num_candidates, greedy)
    actors = {"policy": served, **baseline_actors(config, list(probe.doc_features), slate_size_of(probe))}
    truth = ground_truth_table(make, actors, cfg.ground_truth_episodes, config.seed, batch, cfg.gamma)
    policy_truth = truth[0]
    curve = []
    for epoch, checkpoint in checkpoint_policies(out, metadata):
        actor = ServedPolicyActor(checkpoint, policy_ids, action_names, env_features, num_candidates, greedy)
        returns = simulate(make, actor, cfg.curve_episodes, config.seed, batch, cfg.gamma)
        curve.append({"epoch": epoch, **GroundTruth.from_returns(f"epoch_{epoch}", returns).to_dict()})

    step_truth, step_note = None, "the simulator is not the long-term-satisfaction model"
    if config.env.type == "lts" or config.env.recsim_env == "long_term_satisfaction":
        per_context, step_note = one_step_truth(evaluation["state"], table_ids, target, action_names,
                                                LTSParams.from_config(config.env))
        step_truth = None if per_context is None else float(per_context.mean())

    report = {
        "gamma": cfg.gamma,
        "relative": RELATIVE,
        "intervals": {"method": INTERVAL_METHOD, "confidence": cfg.confidence_level,
                      "bootstrap_samples": cfg.bootstrap_samples, "model_bootstrap_fits": cfg.model_bootstrap_fits,
                      "model_refit_fraction": cfg.model_refit_fraction},
        "fqe_transitions": "1-step, rebuilt from consecutive rows of each train episode (reward = one-step reward)",
        "model_inputs": {"network": "per_action" if network is None else "per_candidate",
                         "history_decays": list(cfg.history_decays), "history_features":
                         int(model_state(train).shape[1] - train["state"].shape[1]),
                         "note": "FQE and the reward model see the state plus, per decay d, sum_{k<t} d^(t-1-k) "
                                 "x_k over the episode's earlier steps (x: context features and the chosen "
                                 "candidate's features); the evaluated policy sees only its own features"},
        "policy": {"path": str(out / "export" / "policy.pt"), "greedy": greedy,
                   "mode": "one-hot of the greedy action" if greedy else "softmax action_probabilities"},
        "eval_split": {"rows": int(len(evaluation["action"])),
                       "episodes": int(len(np.unique(evaluation["mdp_key"])))},
        "one_step": {"estimates": [with_truth(e.to_dict(), step_truth) for e in one_step], "truth": step_truth,
                     "truth_note": step_note if step_truth is None else
                     "exact E_pi[r | s] = sum_a pi(a|s) exp(mu + sigma^2/2) averaged over the logged eval contexts"},
        "sequential": {"estimates": [with_truth(e.to_dict(), policy_truth.mean) for e in sequential],
                       "truth": policy_truth.mean, "truth_interval": [policy_truth.lower, policy_truth.upper],
                       "truth_note": f"served policy's mean discounted (gamma={cfg.gamma:g}) return over "
                                     f"{policy_truth.episodes} simulated episodes"},
        "ground_truth": {"episodes": cfg.ground_truth_episodes, "gamma": cfg.gamma, "seed": config.seed,
                         "policies": [t.to_dict() for t in truth]},
        "training_curve": curve,
        "training_curve_note": "true return of each per-epoch checkpoint found under training/checkpoints "
                               f"(the trainer keeps the newest two; {cfg.curve_episodes} episodes each, "
                               "the same simulated users)",
        "logging_self_check": logging_self_check(config, evaluation, table_ids, action_names, env_features,
                                                 num_candidates),
        "cpe_seconds": {name: round(seconds, 2) for name, seconds in timings.items()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    paths = write_report(out / "evaluation", report)
    one_step_by_name, sequential_by_name = {e.name: e for e in one_step}, {e.name: e for e in sequential}
    return {"true_return": policy_truth.to_dict(),
            "one_step_DR": one_step_by_name["DR"].value,
            "sequential_DR": sequential_by_name["DR"].value,
            "WDR": sequential_by_name["WDR"].value,
            "one_step_truth": step_truth, **paths, "seconds": report["seconds"]}
