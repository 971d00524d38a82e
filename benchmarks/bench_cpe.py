"""Counterfactual estimators on synthetic problems with a known value: bias, RMSE, interval coverage and width,
over repeated independent data sets; then the time of one call (point estimate plus bootstrap) at a larger size.

    .venv/bin/python benchmarks/bench_cpe.py [--repeats 40] [--contexts 1000] [--episodes 500] [--samples 200]

One-step: the contextual bandit of reagent_recsys.evaluation.synthetic (uniform logging over 4 actions, softmax
target), reward model = true means + 0.2 (biased). Sequential: the 3-state MDP (horizon 6, gamma 0.9), model =
exact Q_t + 0.2 (biased). Coverage is the share of 95% intervals that contain the true value.
The model column of the sequential table is the (biased) model's own value (DM).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reagent_recsys.evaluation import (  # noqa: E402
    BanditData,
    BootstrapSpec,
    EpisodeData,
    direct_method,
    doubly_robust,
    evaluate_one_step,
    evaluate_sequential,
    inverse_propensity_score,
    magic,
    per_decision_importance_sampling,
    self_normalized_ips,
    sequential_doubly_robust,
    switch_doubly_robust,
    weighted_doubly_robust,
    weighted_per_decision_importance_sampling,
)
from reagent_recsys.evaluation.synthetic import (  # noqa: E402
    LOGGING_POLICY,
    TARGET_POLICY,
    finite_horizon_q,
    make_bandit_problem,
    make_mdp,
    simulate,
)

HORIZON = 6


def run_estimators(make_estimates, repeats: int) -> dict[str, dict[str, list[float]]]:
    """name -> {error, covered, width} over `repeats` independent data sets."""
    stats: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for rep in range(repeats):
        truth, estimates = make_estimates(rep)
        for est in estimates:
            stats[est.name]["error"].append(est.value - truth)
            stats[est.name]["covered"].append(est.lower <= truth <= est.upper)
            stats[est.name]["width"].append(est.upper - est.lower)
    return stats


def bandit_data(n: int, seed: int) -> tuple[float, BanditData]:
    problem = make_bandit_problem(n, seed=seed)
    data = BanditData(problem.logged_action, problem.logged_propensity, problem.reward, problem.target_probs,
                      reward_predictions=(problem.q_true + 0.2)[problem.context])
    return problem.true_value, data


def episode_data(num_episodes: int, seed: int) -> tuple[float, EpisodeData]:
    mdp = make_mdp()
    q_table = finite_horizon_q(mdp, TARGET_POLICY, HORIZON)
    episodes = simulate(mdp, LOGGING_POLICY, num_episodes, HORIZON, seed=seed)
    data = EpisodeData.from_flat(
        episodes.episode_key, episodes.sequence_number, episodes.action, episodes.propensity, episodes.reward,
        TARGET_POLICY[episodes.state], mdp.gamma, q_estimates=q_table[episodes.step, episodes.state] + 0.2,
    )
    return float(mdp.initial @ (TARGET_POLICY * q_table[0]).sum(axis=1)), data


def print_table(title: str, stats) -> None:
    print(f"\n{title}")
    print(f"{'estimator':10s} {'bias':>8s} {'RMSE':>8s} {'coverage':>9s} {'width':>8s}")
    for name, row in stats.items():
        error = np.array(row["error"])
        print(f"{name:10s} {error.mean():8.4f} {np.sqrt((error**2).mean()):8.4f} "
              f"{np.mean(row['covered']):9.2f} {np.mean(row['width']):8.4f}")


def print_timing(title: str, data, estimators, spec: BootstrapSpec) -> None:
    print(f"\n{title}")
    for estimator in estimators:
        started = time.perf_counter()
        est = estimator(data, spec)
        print(f"{est.name:10s} {time.perf_counter() - started:8.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--contexts", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()

    def spec(seed: int) -> BootstrapSpec:
        return BootstrapSpec(samples=args.samples, seed=seed)

    def one_step(rep: int):
        truth, data = bandit_data(args.contexts, rep)
        return truth, evaluate_one_step(data, spec(rep))

    def sequential(rep: int):
        truth, data = episode_data(args.episodes, rep)
        return truth, evaluate_sequential(data, spec(rep), model_name="model")

    print(f"{args.samples} bootstrap resamples, 95% intervals, {args.repeats} independent data sets per row")
    print_table(f"one-step: {args.contexts} contexts (reward model biased by +0.2)",
                run_estimators(one_step, args.repeats))
    print_table(f"sequential: {args.episodes} episodes, horizon {HORIZON} (Q model biased by +0.2)",
                run_estimators(sequential, args.repeats))
    print_timing("seconds per estimator call, 100,000 contexts", bandit_data(100_000, 0)[1],
                 [direct_method, inverse_propensity_score, self_normalized_ips, doubly_robust,
                  switch_doubly_robust], spec(0))
    print_timing("seconds per estimator call, 5,000 episodes", episode_data(5_000, 0)[1],
                 [per_decision_importance_sampling, weighted_per_decision_importance_sampling,
                  sequential_doubly_robust, weighted_doubly_robust, magic], spec(0))


if __name__ == "__main__":
    main()
