"""Counterfactual estimators on synthetic problems with a known value: bias, RMSE, interval coverage and width,
over repeated independent data sets; then the time of one call (point estimate plus bootstrap) at a larger size.

    .venv/bin/python benchmarks/bench_cpe.py [--repeats 40] [--contexts 1000] [--episodes 500] [--samples 200]
    .venv/bin/python benchmarks/bench_cpe.py --only-fits [--fit-episodes 16000] [--fit-iterations 11] [--fit-rounds 3] ...
        # defaults: sweet_bitter's evaluate workload (FQE 11 x 6, reward model 10 epochs, M = 4), ~10 min a round

One-step: the contextual bandit of reagent_recsys.evaluation.synthetic (uniform logging over 4 actions, softmax
target), reward model = true means + 0.2 (biased). Sequential: the 3-state MDP (horizon 6, gamma 0.9), model =
exact Q_t + 0.2 (biased). Coverage is the share of 95% intervals that contain the true value.
The model column of the sequential table is the (biased) model's own value (DM).

Model fits (last table): the M = K + 1 FQE and reward-model fits of workflow.evaluate (main + K bootstrap refits
from scratch, `model_refit_fraction` 1) on synthetic logs of sweet_bitter's shape (episodes x 10 steps, 20
candidates with one feature each, satisfaction and time, 5 history decays: 37 model-state columns, per-candidate
networks [128, 128]), fitted (a) one after another by the code before the ensemble (`fqe.py` at BASELINE_COMMIT,
read with git), (b) one after another by today's `fit_fqe` / `fit_reward_model`, (c) together by
`fit_fqe_ensemble` / `fit_reward_model_ensemble`. Same data, rows and seeds; wall and CPU seconds (CPU time is
the fairer ratio on a shared machine), each method's best of `--fit-rounds` rounds run round-robin, and the
resulting estimates (mean and spread over the M fits).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
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
BASELINE_COMMIT = "d4f0e47"  # fqe.py before the batched ensemble


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


def sweet_bitter_like_logs(num_episodes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Uniform logs of a sweet/bitter world (10 steps, 20 candidates): sweet pays now and lowers satisfaction,
    bitter pays little and raises it; the model state adds 5 history decays. Target: bitter, then sweet."""
    from reagent_recsys.evaluation.fqe import next_step_index
    from reagent_recsys.evaluation.history import StateLayout, history_features

    horizon, slots, rng = 10, 20, np.random.default_rng(seed)
    n = num_episodes * horizon
    docs = np.where(np.arange(slots) % 2 == 0, rng.uniform(0.8, 1.0, (n, slots)), rng.uniform(0.0, 0.2, (n, slots)))
    action = rng.integers(0, slots, n)
    sat, time_left = np.empty(n), np.tile(np.arange(horizon, 0, -1), num_episodes).astype(float)
    reward = np.empty(n)
    level = np.ones(num_episodes)
    for t in range(horizon):  # vectorized over episodes
        rows = np.arange(num_episodes) * horizon + t
        sat[rows] = level
        chosen = docs[rows, action[rows]]
        reward[rows] = np.exp(2.0 * level * chosen) + rng.normal(0, 0.1, num_episodes)
        level = np.clip(level + 0.3 * (0.5 - chosen), 0.0, 3.0)
    state = np.column_stack([sat, time_left, docs]).astype(np.float32)  # (N, 22)
    layout = StateLayout.from_candidates(22, np.arange(2, 22)[None])
    key, seq = np.repeat(np.arange(num_episodes), horizon), np.tile(np.arange(horizon), num_episodes)
    history = history_features(key, seq, state, action, slots, layout, [0.5, 0.8, 0.9, 0.95, 1.0])
    model_state = np.concatenate([state, history], axis=1)  # (N, 37)
    sweet = np.argmax(docs * (np.arange(slots) % 2 == 0), axis=1)
    bitter = np.argmin(docs + (np.arange(slots) % 2 == 0), axis=1)
    target = np.eye(slots)[np.where(time_left <= 3, sweet, bitter)]  # (N, A) greedy
    nxt, live = next_step_index(key, seq)
    return {"state": model_state, "action": action, "reward": reward, "next_state": model_state[nxt],
            "not_terminal": live, "next_target_probs": target[nxt], "target": target, "key": key, "first": seq == 0,
            "layout": StateLayout.from_candidates(37, np.arange(2, 22)[None])}


def baseline_fqe_module():
    """reagent_recsys/evaluation/fqe.py at BASELINE_COMMIT, imported under another name (None without git)."""
    try:
        source = subprocess.run(["git", "show", f"{BASELINE_COMMIT}:reagent_recsys/evaluation/fqe.py"], cwd=ROOT,
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(tempfile.mkdtemp()) / "fqe_baseline.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("fqe_baseline", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["fqe_baseline"] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def print_fit_comparison(args) -> None:
    """Sequential (baseline and today's single-fit functions) vs the batched ensemble, side by side."""
    import torch

    from reagent_recsys.evaluation import fqe

    data = sweet_bitter_like_logs(args.fit_episodes)
    row_sets, seeds = fqe.fit_plan(data["key"], args.fits - 1, seed=0)
    arrays = [data[k] for k in ("state", "action", "reward", "next_state", "not_terminal", "next_target_probs")]
    common = {"hidden_sizes": (128, 128), "learning_rate": 1e-3, "batch_size": 512, "layout": data["layout"]}
    fqe_kw = {**common, "iterations": args.fit_iterations, "epochs": args.fit_epochs}
    start, first_target = data["state"][data["first"]], data["target"][data["first"]]

    def sequential(module):
        def run():
            fits = [module.fit_fqe(*(a[rows] for a in arrays), 0.99, seed=seed, **fqe_kw)
                    for rows, seed in zip(row_sets, seeds, strict=True)]
            rewards = [module.fit_reward_model(data["state"][rows], data["action"][rows], data["reward"][rows], 20,
                                               epochs=args.reward_epochs, seed=seed, **common)
                       for rows, seed in zip(row_sets, seeds, strict=True)]
            return fits, rewards
        return run

    def ensemble(precision):
        def run():
            fits = fqe.fit_fqe_ensemble(*arrays, 0.99, row_sets=row_sets, seeds=seeds, precision=precision, **fqe_kw)
            rewards = fqe.fit_reward_model_ensemble(data["state"], data["action"], data["reward"], 20,
                                                    row_sets=row_sets, seeds=seeds, epochs=args.reward_epochs,
                                                    precision=precision, **common)
            return fits, rewards
        return run

    baseline = baseline_fqe_module()
    for module in (baseline, fqe):  # warm up torch (first-call costs) outside the timings
        if module is not None:
            module.fit_fqe(*(a[:600] for a in arrays), 0.99, **{**fqe_kw, "iterations": 1, "epochs": 1})
    methods = ([("sequential, before (" + BASELINE_COMMIT + ")", sequential(baseline))] if baseline else []) + [
        ("sequential, fit_fqe today", sequential(fqe)), ("ensemble (all M at once)", ensemble(torch.float32))]
    if fqe.matmul_dtype("auto") == torch.bfloat16:  # the default where the CPU multiplies bfloat16 natively
        methods.append(("ensemble, bfloat16 matmuls", ensemble(torch.bfloat16)))
    print(f"\nmodel fits: M = {args.fits} (main + {args.fits - 1} bootstrap refits from scratch), "
          f"{len(data['action']):,} train transitions ({args.fit_episodes:,} episodes x 10), 20 actions, "
          f"per-candidate [128, 128]; FQE {args.fit_iterations} iterations x {args.fit_epochs} epochs, "
          f"reward model {args.reward_epochs} epochs; one torch thread")
    print(f"{'method':34s} {'wall s':>8s} {'CPU s':>8s} {'x wall':>7s} {'x CPU':>7s} "
          f"{'FQE V(s0) mean':>15s} {'spread':>7s} {'DM mean':>8s} {'spread':>7s}")
    timings: dict[str, list[tuple[float, float]]] = defaultdict(list)
    results = {}
    for _ in range(args.fit_rounds):  # round-robin, so a slow spell of the shared machine hits every method
        for name, run in methods:
            wall, cpu = time.perf_counter(), time.process_time()
            results[name] = run()
            timings[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    reference = None
    for name, _ in methods:
        wall, cpu = (min(t[i] for t in timings[name]) for i in (0, 1))  # best of the rounds, as timeit does
        reference = reference or (wall, cpu)
        fits, rewards = results[name]
        v = [float(f.values(start, first_target).mean()) for f in fits]
        dm = [float(r.values(data["state"], data["target"]).mean()) for r in rewards]
        print(f"{name:34s} {wall:8.1f} {cpu:8.1f} {reference[0] / wall:7.2f} {reference[1] / cpu:7.2f} "
              f"{np.mean(v):15.3f} {np.std(v, ddof=1):7.3f} {np.mean(dm):8.3f} {np.std(dm, ddof=1):7.3f}")
    if args.fit_rounds > 1:
        print(f"best of {args.fit_rounds} rounds per method (all wall s: "
              + "; ".join(f"{name.split(' (')[0]}: " + ", ".join(f"{w:.1f}" for w, _ in timings[name])
                          for name, _ in methods) + ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--contexts", type=int, default=1000)
    parser.add_argument("--episodes", type=int, default=500)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--only-fits", action="store_true", help="only the model-fit comparison")
    parser.add_argument("--fit-episodes", type=int, default=16_000, help="train episodes of the model-fit table")
    parser.add_argument("--fit-iterations", type=int, default=11, help="FQE iterations (sweet_bitter: 11)")
    parser.add_argument("--fit-epochs", type=int, default=6, help="FQE epochs per iteration (sweet_bitter: 6)")
    parser.add_argument("--reward-epochs", type=int, default=10, help="reward-model epochs (sweet_bitter: 10)")
    parser.add_argument("--fits", type=int, default=4, help="M = main fit + refits (sweet_bitter: 4)")
    parser.add_argument("--fit-rounds", type=int, default=3,
                        help="time every method this many times, round-robin, and keep each one's best")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.only_fits:
        print_fit_comparison(args)
        return

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
    print_fit_comparison(args)


if __name__ == "__main__":
    main()
