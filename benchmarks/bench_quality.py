"""Learning quality and CPE accuracy on sweet_bitter: the sample configs end to end, then one table.

    .venv/bin/python benchmarks/bench_quality.py [--configs sweet_bitter sweet_bitter_latent sweet_bitter_bandit]
        [--out outputs/bench_quality] [--set key=value ...]
    .venv/bin/python benchmarks/bench_quality.py --sweep data_quality [--sweep-episodes N] [--sweep-logs ...]
        # the data-quality experiment instead (benchmarks/data_quality.py)

Each config runs `workflow.end_to_end` into `<out>/<config>` (stages already up to date are skipped, so a second
call only re-tabulates). From `evaluation/report.json`: the learned policy's true return (simulator, 95%
interval), the random / always-sweetest / always-bitterest / logging baselines, and the sequential DR and WDR
estimates with their intervals, their error relative to the truth, whether the truth is inside and whether they
are within 2% of it (issue 10's target).
Ranking: the random, always-sweetest and always-bitterest policies are evaluated here with the same sequential
estimators (FQE fit per policy, `reagent_recsys.evaluation.pipeline.run_cpe`), and their order by DR (WDR) is compared with
the order of the true returns; two policies whose true intervals overlap count as tied (any order is right).
A misordered pair is listed, marked "(unresolved)" when the estimator's own intervals for the two overlap.
`e2e s` is the sum of the stage times recorded in `<out>/<config>/_stages.json` when each stage last ran.
"""

from __future__ import annotations

import argparse
import builtins
import functools
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from reagent_recsys.config import GreedyPolicyConfig, PipelineConfig, RandomPolicyConfig, load_config  # noqa: E402
from reagent_recsys.data.loaders import read_table_metadata  # noqa: E402
from reagent_recsys.evaluation.ground_truth import (  # noqa: E402
    action_slots,
    document_columns,
    env_factory,
    logging_probabilities,
)
from reagent_recsys.evaluation.inputs import read_features_description, read_split, state_layout  # noqa: E402
from reagent_recsys.evaluation.pipeline import Target, run_cpe  # noqa: E402
from reagent_recsys.evaluation.progress import Progress  # noqa: E402
from reagent_recsys.policies.logging import build_policy  # noqa: E402
from workflow.end_to_end import LEDGER_FILE, end_to_end  # noqa: E402

CONFIGS = ("sweet_bitter", "sweet_bitter_latent", "sweet_bitter_bandit")
BASELINES = {
    "random": RandomPolicyConfig(),
    "always_sweetest": GreedyPolicyConfig(feature="clickbait", direction="max"),
    "always_bitterest": GreedyPolicyConfig(feature="clickbait", direction="min"),
}
ESTIMATORS = ("DR", "WDR")


def baseline_estimates(config: PipelineConfig) -> dict[str, dict[str, dict[str, float]]]:
    """{baseline: {estimator: estimate dict}}: DR and WDR of each fixed baseline policy on the eval split (one
    CPE-library run with the baselines as candidates: FQE fit per policy)."""
    out = Path(config.output_dir)
    table_dir = out / "training_table"
    manifest = read_table_metadata(table_dir / "eval")
    table_ids, action_names = [int(f) for f in manifest["feature_ids"]], [str(a) for a in manifest["action_names"]]
    train, evaluation = read_split(table_dir / "train"), read_split(table_dir / "eval")
    layout = state_layout(table_ids, read_features_description(config.paths.features_description), action_names)
    probe = env_factory(config.env)(1, np.random.default_rng(0))
    columns = document_columns(table_ids, probe.features, int(probe.num_actions))
    if columns is None:
        raise ValueError(f"{table_dir}: the candidates' clickbait is not in the state; cannot evaluate baselines")
    slots = action_slots(action_names, int(probe.num_actions))
    targets = []
    for name, policy_config in BASELINES.items():
        policy = build_policy(policy_config, field=f"baseline {name}")
        targets.append(Target(name, name, logging_probabilities(policy, evaluation["state"], columns, slots),
                              logging_probabilities(policy, train["state"], columns, slots)))
    report = run_cpe(config.evaluation, config.seed, train, evaluation, targets, layout, Progress("bench_quality"))
    return {p.name: {e.name: e.to_dict() for e in p.sequential if e.name in ESTIMATORS} for p in report.policies}


def misordered_pairs(truth: dict[str, dict[str, float]], estimate: dict[str, dict[str, float]]) -> list[str]:
    """Pairs of policies with disjoint true intervals that the estimate orders the other way ("a~b"), each
    marked "(unresolved)" when the estimate's own intervals for the two overlap (it claims no order)."""
    wrong = []
    for a, b in itertools.combinations(truth, 2):
        ta, tb, ea, eb = truth[a], truth[b], estimate[a], estimate[b]
        if ta["upper"] < tb["lower"] or tb["upper"] < ta["lower"]:  # truly different
            if (ta["mean"] < tb["mean"]) != (ea["value"] < eb["value"]):
                overlap = ea["lower"] <= eb["upper"] and eb["lower"] <= ea["upper"]
                wrong.append(f"{a}~{b}{' (unresolved)' if overlap else ''}")
    return wrong


def run(name: str, out_root: Path, overrides: list[str], baselines: bool = True) -> dict[str, Any]:
    """One config end to end, then its row of the table (`baselines` False: no baseline estimates, no ranking)."""
    config = load_config(ROOT / "sample_configs" / f"{name}.yaml", [f"output_dir={out_root / name}", *overrides])
    started = time.perf_counter()
    stages = end_to_end(config)
    seconds = time.perf_counter() - started
    report = json.loads((Path(config.output_dir) / "evaluation" / "report.json").read_text())
    truth = {p["name"]: p for p in report["ground_truth"]["policies"]}
    learned = {e["name"]: e for e in report["policies"][0]["sequential"]}
    estimates = baseline_estimates(config) if baselines else {}
    ranks = {}
    truth4 = {"learned": truth["policy"], **{b: truth[b] for b in BASELINES}}
    for est in ESTIMATORS if baselines else ():
        ranks[est] = misordered_pairs(truth4, {"learned": learned[est], **{b: estimates[b][est] for b in BASELINES}})
    ledger = json.loads((Path(config.output_dir) / LEDGER_FILE).read_text())
    stage_seconds = sum(entry["seconds"] for entry in ledger.values())  # as recorded when each stage last ran
    return {"config": name, "truth": truth, "learned": learned, "baselines": estimates, "ranks": ranks,
            "seconds": seconds, "stage_seconds": stage_seconds,
            "skipped": [s["workflow"] for s in stages["stages"] if s["status"] == "skipped"]}


def _estimate_cell(est: dict[str, Any], truth: float) -> str:
    """value [interval], its error relative to the truth, whether the truth is inside and the error within 2%."""
    inside = est["lower"] <= truth <= est["upper"]
    error = (est["value"] - truth) / abs(truth)
    return (f"{est['value']:7.1f} [{est['lower']:6.1f},{est['upper']:6.1f}] {error:+6.1%} "
            f"in={'y' if inside else 'n'} 2%={'y' if abs(error) <= 0.02 else 'n'}")


def _rank_cell(ranks: dict[str, list[str]]) -> str:
    """"y/n": whether DR / WDR order the four policies right; "-" without baseline estimates."""
    return "/".join("n" if ranks[est] else "y" for est in ESTIMATORS) if ranks else "-"


def print_table(rows: list[dict[str, Any]], file: Any = None) -> None:
    print = functools.partial(builtins.print, file=file or sys.stdout)  # noqa: A001
    print(f"{'config':20s} {'learned (true, 95%)':22s} {'random':>7s} {'sweet':>6s} {'bitter':>6s} "
          f"{'logging':>7s}  {'DR [95%]':44s} {'WDR [95%]':44s} rank DR/WDR  e2e s")
    for row in rows:
        t = row["truth"]
        p = t["policy"]
        print(f"{row['config']:20s} {p['mean']:6.1f} [{p['lower']:6.1f},{p['upper']:6.1f}] "
              f"{t['random']['mean']:7.1f} {t['always_sweetest']['mean']:6.1f} {t['always_bitterest']['mean']:6.1f} "
              f"{t['logging']['mean']:7.1f}  {_estimate_cell(row['learned']['DR'], p['mean']):44s} "
              f"{_estimate_cell(row['learned']['WDR'], p['mean']):44s} "
              f"{_rank_cell(row['ranks']):11s}{row['stage_seconds']:7.0f}")
    if any(row["baselines"] for row in rows):
        print("\nbaselines by the estimators (true | DR | WDR):")
    for row in rows:
        if not row["baselines"]:
            continue
        cells = []
        for name in BASELINES:
            est = row["baselines"][name]
            cells.append(f"{name} {row['truth'][name]['mean']:.1f} | {est['DR']['value']:.1f} | "
                         f"{est['WDR']['value']:.1f}")
        print(f"  {row['config']:20s} " + ";  ".join(cells))
    for row in rows:
        for est, pairs in row["ranks"].items():
            if pairs:
                print(f"  {row['config']}: {est} misorders {', '.join(pairs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), help="sample_configs/<name>.yaml to run")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench_quality", help="output root")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="dotted.key=value override")
    parser.add_argument("--sweep", choices=["data_quality"], help="run this sweep instead of the configs")
    parser.add_argument("--sweep-episodes", type=int, default=None, help="data_quality: logged episodes per log")
    parser.add_argument("--sweep-logs", nargs="+", default=None, help="data_quality: only these logs")

    parser.add_argument("--no-baselines", action="store_true",
                        help="skip the baselines' CPE (3 FQE fits per config) and the ranking check")
    args = parser.parse_args()
    if args.sweep == "data_quality":
        from benchmarks.data_quality import SWEEP_EPISODES, print_sweep_table, run_sweep

        result = run_sweep(args.out, args.overrides, args.sweep_episodes or SWEEP_EPISODES, args.sweep_logs)
        print_sweep_table(result)
        print(f"total {result['seconds']:.0f} s")
        return
    rows = []
    for name in args.configs:
        rows.append(run(name, args.out, args.overrides, baselines=not args.no_baselines))
        print(f"{name}: {rows[-1]['seconds']:.0f} s (skipped: {', '.join(rows[-1]['skipped']) or 'none'})",
              file=sys.stderr, flush=True)
        print_table(rows[-1:], file=sys.stderr)  # each row as soon as it is known (a long run may be stopped)
    print_table(rows)


if __name__ == "__main__":
    main()
