"""The CPE library's entry point: a training table's train/eval splits + target policies -> a typed report.

    report = run_cpe(config.evaluation, seed, train, evaluation, [Target("mine", "...", probs, train_probs)],
                     layout)
    report.to_dict()   # JSON-safe: estimates, trust verdicts, the ranking of every candidate and the logging policy

No simulator and no logging-policy model: the logging policy's value is the logged (discounted) return.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reagent_recsys.config import EvaluationConfig
from reagent_recsys.evaluation.bootstrap import BootstrapSpec, Estimate, bootstrap_estimate, weighted_mean
from reagent_recsys.evaluation.cpe import INTERVAL_METHOD, PolicyCPE, evaluate_policy, fit_reward_models
from reagent_recsys.evaluation.history import StateLayout
from reagent_recsys.evaluation.inputs import Split, add_model_state, model_state, network_layout
from reagent_recsys.evaluation.progress import QUIET, Progress
from reagent_recsys.evaluation.sequential import EpisodeData

LOGGING = "logging"
RELATIVE = {
    "one_step": "estimate / mean logged one-step reward of the eval split (1.0 = as good as the logging policy)",
    "sequential": "estimate / mean logged discounted (gamma) episode return of the eval split "
                  "(1.0 = as good as the logging policy)",
}


@dataclass
class Target:
    """A policy to evaluate: pi(.|s) (N, A) on the eval rows and, for FQE, on the train rows (or None)."""

    name: str
    source: str
    eval_probs: np.ndarray
    train_probs: np.ndarray | None = None


@dataclass
class CPEReport:
    """Every candidate's estimates and trust verdicts, the logging policy's logged value, and the ranking."""

    gamma: float
    eval_rows: int
    eval_episodes: int
    logging: dict[str, Estimate]  # "one_step" / "sequential": the logged value with its bootstrap interval
    policies: list[PolicyCPE]
    ranking: dict[str, dict[str, Any]]
    model_inputs: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)

    def policy(self, name: str) -> PolicyCPE:
        return next(p for p in self.policies if p.name == name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gamma": self.gamma,
            "relative": RELATIVE,
            "eval_split": {"rows": self.eval_rows, "episodes": self.eval_episodes},
            "logging": {k: e.to_dict() for k, e in self.logging.items()},
            "policies": [{"name": p.name, "source": p.source, "notes": p.notes,
                          "one_step": [e.to_dict() for e in p.one_step],
                          "sequential": [e.to_dict() for e in p.sequential],
                          "trust": {k: t.to_dict() for k, t in p.trust.items()}} for p in self.policies],
            "ranking": self.ranking,
            "model_inputs": self.model_inputs,
            "cpe_seconds": {k: round(v, 2) for k, v in self.seconds.items()},
        }


def logged_values(cfg: EvaluationConfig, seed: int, evaluation: Split) -> dict[str, Estimate]:
    """The logging policy's on-policy value: mean logged reward per context and mean discounted return per
    episode, each with its bootstrap interval (the same resamples as every estimator's)."""
    spec = BootstrapSpec.from_config(cfg, seed)
    reward = weighted_mean(evaluation["reward"])
    one_step = bootstrap_estimate(LOGGING, reward, reward, len(evaluation["reward"]), spec)
    logged = np.eye(evaluation["possible_actions_mask"].shape[1])[evaluation["action"]]
    episodes = EpisodeData.from_flat(evaluation["mdp_key"], evaluation["sequence_number"], evaluation["action"],
                                     evaluation["action_probability"], evaluation["reward"], logged, cfg.gamma)
    returns = weighted_mean(episodes.logged_returns())
    return {"one_step": one_step, "sequential": bootstrap_estimate(LOGGING, returns, returns,
                                                                   episodes.num_episodes, spec)}


def _separated(a: tuple[str, Estimate], b: tuple[str, Estimate], logging: Estimate) -> bool:
    """Whether the intervals of `a` and `b` separate them. Against the logging policy, when its value is
    clearly positive: the candidate's relative interval (paired resamples) excludes 1; else the intervals are
    disjoint."""
    (name_a, ea), (name_b, eb) = a, b
    paired = logging.lower > 0 and LOGGING in (name_a, name_b)
    candidate = eb if name_a == LOGGING else ea
    if paired and candidate.relative_lower is not None and candidate.relative_upper is not None:
        return not candidate.relative_lower <= 1.0 <= candidate.relative_upper
    return ea.upper < eb.lower or eb.upper < ea.lower


def rank(policies: list[PolicyCPE], logging: dict[str, Estimate]) -> dict[str, dict[str, Any]]:
    """Per estimator ("sequential/DR", ...): every candidate and the logging policy, best first, with intervals,
    and the pairs whose intervals do not separate them (`_separated`)."""
    keys = list(dict.fromkeys(f"{section}/{e.name}" for p in policies for section in ("one_step", "sequential")
                              for e in getattr(p, section)))
    ranking = {}
    for key in keys:
        section = key.split("/", 1)[0]
        entries = [(p.name, est) for p in policies if (est := p.estimate(key)) is not None]
        entries.append((LOGGING, logging[section]))
        entries.sort(key=lambda item: -item[1].value if np.isfinite(item[1].value) else np.inf)
        unresolved = [[a[0], b[0]] for a, b in itertools.combinations(entries, 2)
                      if not _separated(a, b, logging[section])]
        ranking[key] = {"order": [{"name": name, "value": est.to_dict()["value"], "lower": est.to_dict()["lower"],
                                   "upper": est.to_dict()["upper"]} for name, est in entries],
                        "not_separated": unresolved}
    return ranking


def run_cpe(cfg: EvaluationConfig, seed: int, train: Split, evaluation: Split, targets: list[Target],
            layout: StateLayout, progress: Progress = QUIET) -> CPEReport:
    """Fit the models, run every estimator for every target, rank them against the logging policy."""
    if not targets:
        raise ValueError("evaluation.policies: nothing to evaluate")
    started = time.perf_counter()
    with progress.step(f"history features (decays {list(cfg.history_decays)})"):
        train, evaluation = (add_model_state(s, layout, cfg.history_decays) for s in (train, evaluation))
    network = network_layout(cfg.fqe_model, layout, model_state(train).shape[1])
    num_actions = evaluation["possible_actions_mask"].shape[1]
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    reward = fit_reward_models(cfg, seed, train, evaluation, num_actions, network, progress,
                               [t.eval_probs for t in targets])
    seconds["reward_model_fits"] = time.perf_counter() - clock
    results = []
    for target in targets:
        clock = time.perf_counter()
        results.append(evaluate_policy(cfg, seed, train, evaluation, target.name, target.source, target.eval_probs,
                                       target.train_probs, reward, network, progress))
        seconds[f"policy {target.name}"] = time.perf_counter() - clock
    logging = logged_values(cfg, seed, evaluation)
    seconds["cpe_total"] = time.perf_counter() - started
    inputs = {"network": "per_action" if network is None else "per_candidate",
              "history_decays": list(cfg.history_decays),
              "history_features": int(model_state(train).shape[1] - train["state"].shape[1]),
              "fqe_transitions": "1-step, rebuilt from consecutive rows of each train episode",
              "intervals": {"method": INTERVAL_METHOD, "confidence": cfg.confidence_level,
                            "bootstrap_samples": cfg.bootstrap_samples,
                            "model_bootstrap_fits": cfg.model_bootstrap_fits,
                            "model_refit_fraction": cfg.model_refit_fraction}}
    return CPEReport(cfg.gamma, len(evaluation["action"]), len(np.unique(evaluation["mdp_key"])), logging, results,
                     rank(results, logging), inputs, seconds)
