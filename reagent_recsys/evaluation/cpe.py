"""CPE of one target policy on a training table's eval split: model fits, every estimator, trust diagnostics.

One-step (DM, IPS, SNIPS, DR, Switch-DR; the reward model does not depend on the target, so its fits are shared
by every candidate) and sequential (PDIS, WPDIS, FQE, DR, WDR, MAGIC; FQE is fit per target on 1-step
transitions rebuilt from the train split). Model-based intervals include the model's fitting error
(``INTERVAL_METHOD``). Nothing here knows about simulators or logging policies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from reagent_recsys.config import EvaluationConfig
from reagent_recsys.evaluation.bootstrap import BootstrapSpec, Estimate, combine_model_fits
from reagent_recsys.evaluation.diagnostics import ModelError, Trust, WeightStats, judge, unsupported_share
from reagent_recsys.evaluation.fits import FitPlan
from reagent_recsys.evaluation.fqe import (
    FittedQ,
    fit_fqe_ensemble,
    fit_reward_model_ensemble,
    matmul_dtype,
    next_step_index,
)
from reagent_recsys.evaluation.history import StateLayout
from reagent_recsys.evaluation.inputs import Split, fqe_transitions, model_state
from reagent_recsys.evaluation.magic import magic_blend
from reagent_recsys.evaluation.one_step import (
    BanditData,
    dm_terms,
    dr_terms,
    evaluate_one_step,
    switch_dr_terms,
)
from reagent_recsys.evaluation.progress import QUIET, Progress
from reagent_recsys.evaluation.sequential import EpisodeData, doubly_robust_terms, wdr_statistic
from reagent_recsys.evaluation.suite import evaluate_sequential

INTERVAL_METHOD = (
    "percentile bootstrap over eval contexts/episodes (model held fixed); the model-based estimators (DM, DR, "
    "Switch-DR, FQE, sequential DR, WDR, MAGIC) then combine M = K + 1 model fits by Rubin's rules: the reward "
    "model / FQE is refit on K bootstrap resamples of the TRAIN episodes (from scratch with its own seed when "
    "model_refit_fraction is 1, else warm-started from the main fit), the estimator is evaluated with each fit, "
    "the value is their mean, and each half-width h becomes t_nu * sqrt(W + (1 + 1/M) B) with W = (h / z)^2, "
    "B the variance of the M values and nu = (M - 1)(1 + W / ((1 + 1/M) B))^2; model_spread = sqrt(B) and "
    "model_fits = M in each estimate"
)


@dataclass
class ModelFits:
    """The M fitted models (main first) and their predictions (N_eval, A) on the eval split's model state:
    on the pairs the estimators read (the logged action and every action a target puts mass on), 0 elsewhere."""

    models: list[FittedQ]
    predictions: list[np.ndarray]
    error: ModelError | None = None


@dataclass
class PolicyCPE:
    """Every estimate of one target policy, with a trust verdict per estimator ("one_step/IPS", ...)."""

    name: str
    source: str
    one_step: list[Estimate]
    sequential: list[Estimate]
    trust: dict[str, Trust] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def estimate(self, key: str) -> Estimate | None:
        """The estimate "one_step/<name>" or "sequential/<name>", or None."""
        section, name = key.split("/", 1)
        return next((e for e in getattr(self, section) if e.name == name), None)


def _settings(cfg: EvaluationConfig, network: StateLayout | None) -> dict:
    return {"hidden_sizes": tuple(cfg.fqe_hidden_sizes), "learning_rate": cfg.fqe_learning_rate,
            "batch_size": cfg.fqe_batch_size, "layout": network,
            "precision": matmul_dtype(cfg.fqe_matmul_precision)}


def _plan(cfg: EvaluationConfig, seed: int) -> FitPlan:
    return FitPlan(cfg.model_bootstrap_fits, cfg.model_refit_fraction, seed)


# ------------------------------------------------------------------------------------------- models
def needed_pairs(evaluation: Split, targets: Sequence[np.ndarray]) -> np.ndarray:
    """(N_eval, A) bool: the (row, action) pairs whose model prediction an estimator reads: the logged action
    and every action one of the `targets` (pi(.|s) on the eval rows) puts mass on."""
    needed = np.zeros(evaluation["possible_actions_mask"].shape, dtype=bool)
    needed[np.arange(len(needed)), evaluation["action"]] = True
    for target in targets:
        needed |= target > 0
    return needed


def fit_reward_models(cfg: EvaluationConfig, seed: int, train: Split, evaluation: Split, num_actions: int,
                      network: StateLayout | None = None, progress: Progress = QUIET,
                      targets: Sequence[np.ndarray] | None = None) -> ModelFits:
    """The reward model q(x, a) = E[r | x, a] on the train split: main fit + K refits, predicted on eval where
    `targets` (pi(.|s) on the eval rows of every policy it will serve) need it (`needed_pairs`); None: every pair.
    """
    state = model_state(train)

    def fit(row_sets, seeds, init, epochs):
        return fit_reward_model_ensemble(state, train["action"], train["reward"], num_actions, row_sets=row_sets,
                                         seeds=seeds, epochs=epochs, init=init, **_settings(cfg, network))

    with progress.step(f"reward model: {1 + cfg.model_bootstrap_fits} fits (main + {cfg.model_bootstrap_fits} "
                       f"refits) on {len(state)} train rows, {cfg.reward_model_epochs} epochs"):
        models = _plan(cfg, seed).fit(fit, train["mdp_key"], cfg.reward_model_epochs)
    eval_state = model_state(evaluation)
    needed = None if targets is None else needed_pairs(evaluation, targets)
    predictions = [m.q_values(eval_state, needed) for m in models]
    logged = np.take_along_axis(predictions[0], evaluation["action"][:, None], axis=1)[:, 0]
    error = ModelError.of("reward of the logged action", logged, evaluation["reward"])
    return ModelFits(models, predictions, error)


def fit_fqe_models(cfg: EvaluationConfig, seed: int, train: Split, evaluation: Split, train_target: np.ndarray,
                   eval_target: np.ndarray, network: StateLayout | None = None, progress: Progress = QUIET,
                   label: str = "policy") -> ModelFits:
    """FQE of the target (pi(.|s) on the train rows: `train_target`): main fit + K refits, predicted on eval,
    with the main fit's held-out 1-step Bellman residual on the eval split."""
    t = fqe_transitions(train, train_target)
    arrays = [t[k] for k in ("state", "action", "reward", "next_state", "not_terminal", "next_target_probs")]

    def fit(row_sets, seeds, init, iterations):
        return fit_fqe_ensemble(*arrays, cfg.gamma, row_sets=row_sets, seeds=seeds, init=init, iterations=iterations,
                                epochs=cfg.fqe_epochs, **_settings(cfg, network))

    with progress.step(f"FQE of {label}: {1 + cfg.model_bootstrap_fits} fits (main + {cfg.model_bootstrap_fits} "
                       f"refits), {cfg.fqe_iterations} iterations x {cfg.fqe_epochs} epochs on {len(arrays[0])} "
                       "transitions"):
        models = _plan(cfg, seed).fit(fit, train["mdp_key"], cfg.fqe_iterations)
    eval_state = model_state(evaluation)
    needed = needed_pairs(evaluation, [eval_target])
    predictions = [m.q_values(eval_state, needed) for m in models]
    nxt, live = next_step_index(evaluation["mdp_key"], evaluation["sequence_number"])
    q = predictions[0]
    v_next = np.where(live, (q[nxt] * eval_target[nxt]).sum(axis=1), 0.0)
    td_target = evaluation["reward"] + cfg.gamma * v_next
    taken = np.take_along_axis(q, evaluation["action"][:, None], axis=1)[:, 0]
    error = ModelError.of("1-step Bellman target r + gamma V(s')", taken, td_target)
    return ModelFits(models, predictions, error)


# --------------------------------------------------------------------------------------- estimates
def _bandit(evaluation: Split, target: np.ndarray, predictions: np.ndarray | None) -> BanditData:
    return BanditData(evaluation["action"], evaluation["action_probability"], evaluation["reward"], target,
                      reward_predictions=predictions, possible_action_mask=evaluation["possible_actions_mask"])


def _episodes(cfg: EvaluationConfig, evaluation: Split, target: np.ndarray, q: np.ndarray | None) -> EpisodeData:
    return EpisodeData.from_flat(evaluation["mdp_key"], evaluation["sequence_number"], evaluation["action"],
                                 evaluation["action_probability"], evaluation["reward"], target, cfg.gamma,
                                 q_estimates=q, possible_action_mask=evaluation["possible_actions_mask"])


def _combine(estimates: list[Estimate], values: dict[str, list[float]], confidence: float) -> list[Estimate]:
    return [combine_model_fits(e, values[e.name], confidence) if values.get(e.name) else e for e in estimates]


def one_step_estimates(cfg: EvaluationConfig, seed: int, evaluation: Split, target: np.ndarray,
                       fits: ModelFits | None) -> list[Estimate]:
    """DM, IPS, SNIPS, DR, Switch-DR (IPS and SNIPS only without `fits`); model-based ones over the M fits."""
    spec = BootstrapSpec.from_config(cfg, seed)
    estimates = evaluate_one_step(_bandit(evaluation, target, fits.predictions[0] if fits else None), spec,
                                  cfg.switch_tau)
    values: dict[str, list[float]] = {"DM": [], "DR": [], "Switch-DR": []}
    for predictions in fits.predictions[1:] if fits else []:
        data = _bandit(evaluation, target, predictions)
        values["DM"].append(float(dm_terms(data).mean()))
        values["DR"].append(float(dr_terms(data).mean()))
        values["Switch-DR"].append(float(switch_dr_terms(data, cfg.switch_tau).mean()))
    return _combine(estimates, values, cfg.confidence_level)


def model_based_values(data: EpisodeData, num_j_steps: int, seed: int) -> dict[str, float]:
    """Point values of FQE (the model's value), DR, WDR and MAGIC on `data` (no resampling)."""
    q, v = data.model_terms()
    wdr = wdr_statistic(data.w, data.w_prev, data.r, q, v, data.discount)(np.ones((1, data.num_episodes)))
    return {"FQE": float(v[:, 0].mean()), "DR": float(doubly_robust_terms(data).mean()), "WDR": float(wdr[0]),
            "MAGIC": magic_blend(data, num_j_steps, seed).value}


def sequential_estimates(cfg: EvaluationConfig, seed: int, evaluation: Split, target: np.ndarray,
                         fits: ModelFits | None) -> list[Estimate]:
    """PDIS, WPDIS and (with FQE `fits`) FQE, DR, WDR, MAGIC over the M fits."""
    spec = BootstrapSpec.from_config(cfg, seed)
    main = _episodes(cfg, evaluation, target, fits.predictions[0] if fits else None)
    estimates = evaluate_sequential(main, spec, cfg.magic_num_j_steps)
    values: dict[str, list[float]] = {}
    for predictions in fits.predictions[1:] if fits else []:
        point = model_based_values(_episodes(cfg, evaluation, target, predictions), cfg.magic_num_j_steps, spec.seed)
        for name, value in point.items():
            values.setdefault(name, []).append(value)
    return _combine(estimates, values, cfg.confidence_level)


def trust_verdicts(cfg: EvaluationConfig, evaluation: Split, target: np.ndarray, one_step: list[Estimate],
                   sequential: list[Estimate], reward: ModelFits | None, fqe: ModelFits | None) -> dict[str, Trust]:
    """A `Trust` per estimator from the importance weights, the support share and the models' held-out error."""
    support = unsupported_share(target, evaluation["action"], evaluation["possible_actions_mask"])
    context_weights = WeightStats.of(_bandit(evaluation, target, None).importance_weight())
    episode_weights = WeightStats.of(_episodes(cfg, evaluation, target, None).w[:, -1])
    found = {f"one_step/{e.name}": judge(e.name, context_weights, "contexts", reward.error if reward else None,
                                         support) for e in one_step}
    found.update({f"sequential/{e.name}": judge(e.name, episode_weights, "episodes", fqe.error if fqe else None,
                                                support) for e in sequential})
    return found


def evaluate_policy(cfg: EvaluationConfig, seed: int, train: Split, evaluation: Split, name: str, source: str,
                    target: np.ndarray, train_target: np.ndarray | None, reward: ModelFits | None,
                    network: StateLayout | None = None, progress: Progress = QUIET) -> PolicyCPE:
    """Every estimator for one target policy: pi(.|s) on the eval rows (`target`) and, for FQE, on the train
    rows (`train_target`; None: FQE, DR, WDR and MAGIC are skipped). `reward`: the shared reward-model fits."""
    notes = []
    fqe = None
    if train_target is not None:
        fqe = fit_fqe_models(cfg, seed, train, evaluation, train_target, target, network, progress, name)
    else:
        notes.append("no target probabilities on the train split: FQE, sequential DR, WDR and MAGIC not computed")
    with progress.step(f"estimators for {name} ({cfg.bootstrap_samples} bootstrap resamples)"):
        one_step = one_step_estimates(cfg, seed, evaluation, target, reward)
        sequential = sequential_estimates(cfg, seed, evaluation, target, fqe)
    trust = trust_verdicts(cfg, evaluation, target, one_step, sequential, reward, fqe)
    return PolicyCPE(name, source, one_step, sequential, trust, notes)
