"""The tutorials' data-quality experiment on sweet_bitter: offline RL from random, greedy and expert data.

    .venv/bin/python benchmarks/bench_quality.py --sweep data_quality [--out DIR] [--set key=value ...]

1. The expert: sample_configs/sweet_bitter.yaml end to end as is (its learned DQN policy, exported), in
   `<out>/expert`.
2. Six logs of the same size (`SWEEP_EPISODES`): uniformly random; always-sweetest (greedy on clickbait max:
   one action per state, no support elsewhere); per-episode mixtures where 20%, 50%, 80% and 100% of the episodes
   come from the expert and the rest from random. The expert is served epsilon-greedy (`EXPERT_EPSILON`): its
   logs then give every action a probability >= epsilon / 20 (full support, finite importance weights) while
   following the expert 90% of the time.
3. Each log learned with DQN, CQL and BCQ (`training.algorithm`; the sample config's network and optimizer),
   evaluated by workflow.evaluate: the simulator's true return of the learned policy and of the logger, and the
   sequential DR / WDR estimates. The upstream stages of a log run once (DQN's run dir); CQL and BCQ reuse them
   (copied with their ledger entries, so end_to_end skips them) and run train, export and evaluate only.

Every stage already up to date is skipped (a second call re-tabulates). `--set` overrides apply to every run but
the expert's.
"""

from __future__ import annotations

import builtins
import functools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from reagent_recsys.config import PipelineConfig, RunPaths, load_config, validate_config
from workflow.end_to_end import LEDGER_FILE, end_to_end

SAMPLE = "sweet_bitter"
EXPERT_EPSILON = 0.1
SWEEP_EPISODES = 10_000  # per log (100k transitions); the sample config logs 20k random episodes
ALGORITHMS: dict[str, dict[str, Any]] = {
    "dqn": {"algorithm": "dqn"},
    # CQL's penalty is alpha * (logsumexp Q - Q(logged)); Q reaches ~200 here, so alpha must be O(10) to matter.
    "cql": {"algorithm": "cql", "cql_alpha": 10.0},
    # BCQ keeps the actions whose behaviour probability is >= threshold x the most likely one's: 0.3 drops the
    # non-expert actions once the expert's share of a state's actions dominates (from ~20% expert episodes on).
    "bcq": {"algorithm": "bcq", "bcq_threshold": 0.3},
}
# The sweep's evaluation: the sample's FQE, but the model held fixed (no refits: intervals from the episode
# bootstrap only) and a shorter training curve, to keep 18 evaluations affordable on a shared 2-core machine.
SWEEP_EVALUATION = {"model_bootstrap_fits": 0, "curve_episodes": 200, "fqe_epochs": 2}
# The rows the targets are about run first (a long run may be stopped); the table keeps the logical order.
RUN_ORDER = ("expert_20%", "expert_80%", "random", "expert_100%", "expert_50%", "always_sweetest")
UPSTREAM = ("workflow.offline_gym", "workflow.timeline_operator", "workflow.identify_normalization",
            "workflow.training_table")
UPSTREAM_PATHS = (RunPaths.MDP, RunPaths.TIMELINE, RunPaths.NORMALIZATION, RunPaths.TRAINING_TABLE)


def logs(expert_export: Path) -> dict[str, dict[str, Any]]:
    """name -> logging.policy of each log of the sweep."""
    expert = {"type": "exported", "path": str(expert_export), "exploration": "epsilon_greedy",
              "epsilon": EXPERT_EPSILON}
    out: dict[str, dict[str, Any]] = {
        "random": {"type": "random"},
        "always_sweetest": {"type": "greedy", "feature": "clickbait", "direction": "max"},
    }
    for share in (0.2, 0.5, 0.8):
        out[f"expert_{round(share * 100)}%"] = {"type": "mixture", "components": [
            {"weight": share, "policy": expert}, {"weight": round(1.0 - share, 6), "policy": {"type": "random"}}]}
    out["expert_100%"] = expert
    return out


def sweep_config(base: PipelineConfig, output_dir: Path, policy: dict[str, Any], algorithm: dict[str, Any],
                 episodes: int) -> PipelineConfig:
    data = base.model_dump(mode="json")
    data["output_dir"] = str(output_dir)
    data["logging"].update({"num_episodes": episodes, "policy": policy})
    data["training"].update(algorithm)
    data["evaluation"].update(SWEEP_EVALUATION)
    return validate_config(data, source=f"data_quality {output_dir.name}")


def share_upstream(source: Path, target: Path) -> None:
    """Give `target` the upstream stages of `source` (files with their times, ledger entries), once."""
    ledger_path = target / LEDGER_FILE
    if ledger_path.exists():
        return
    target.mkdir(parents=True, exist_ok=True)
    for name in UPSTREAM_PATHS:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, target / name, copy_function=shutil.copy2)
        elif src.exists():
            shutil.copy2(src, target / name)
    ledger = json.loads((source / LEDGER_FILE).read_text())
    ledger_path.write_text(json.dumps({k: v for k, v in ledger.items() if k in UPSTREAM}))


def read_row(run_dir: Path) -> dict[str, Any]:
    """True return of the learned policy and of the logger, and DR / WDR of the learned policy."""
    report = json.loads((run_dir / "evaluation" / "report.json").read_text())
    truth = {p["name"]: p for p in report["ground_truth"]["policies"]}
    estimates = {e["name"]: e for e in report["policies"][0]["sequential"]}
    ledger = json.loads((run_dir / LEDGER_FILE).read_text())
    return {"truth": truth["policy"], "logging": truth["logging"], "DR": estimates.get("DR"),
            "WDR": estimates.get("WDR"), "seconds": sum(e["seconds"] for e in ledger.values())}


def run_sweep(out_root: Path, overrides: list[str], episodes: int = SWEEP_EPISODES,
              only_logs: list[str] | None = None) -> dict[str, Any]:
    """The expert, then every log x algorithm; returns {"expert": row, "rows": {log: {algorithm: row}}}."""
    sample = Path(__file__).resolve().parent.parent / "sample_configs" / f"{SAMPLE}.yaml"
    started = time.perf_counter()
    expert_dir = out_root / "expert"
    end_to_end(load_config(sample, [f"output_dir={expert_dir}"]))
    expert = read_row(expert_dir)
    print(f"data_quality: expert {expert['truth']['mean']:.1f} ({time.perf_counter() - started:.0f} s)",
          file=sys.stderr, flush=True)
    base = load_config(sample, [f"output_dir={out_root}", *overrides])
    rows: dict[str, dict[str, Any]] = {}
    policies = logs(expert_dir / RunPaths.EXPORT)
    for name in sorted(policies, key=lambda n: RUN_ORDER.index(n) if n in RUN_ORDER else len(RUN_ORDER)):
        if only_logs and name not in only_logs:
            continue
        policy = policies[name]
        log_dir = out_root / f"log_{name.replace('%', 'pct')}"
        rows[name] = {}
        for algo, settings in ALGORITHMS.items():
            run_dir = log_dir / algo
            if algo != "dqn":
                share_upstream(log_dir / "dqn", run_dir)
            end_to_end(sweep_config(base, run_dir, policy, settings, episodes))
            rows[name][algo] = read_row(run_dir)
            print(f"data_quality: {name} {algo}: true {rows[name][algo]['truth']['mean']:.1f} "
                  f"({time.perf_counter() - started:.0f} s so far)", file=sys.stderr, flush=True)
        print_sweep_table({"expert": expert, "rows": {name: rows[name]}, "episodes": episodes}, file=sys.stderr)
    rows = {name: rows[name] for name in policies if name in rows}
    return {"expert": expert, "rows": rows, "episodes": episodes, "seconds": time.perf_counter() - started}


def _estimate(estimate: dict[str, Any] | None, truth: float) -> str:
    """The estimate, marked '!' when the truth is outside its 95% interval."""
    value = None if estimate is None else estimate.get("value")
    if not isinstance(value, (int, float)) or value != value:
        return f"{'n/a':>7s}"
    lower, upper = estimate.get("lower"), estimate.get("upper")
    outside = lower is None or upper is None or not lower <= truth <= upper
    return f"{value:6.1f}{'!' if outside else ' '}"


def targets(result: dict[str, Any]) -> list[str]:
    """The issue's targets, each with its figures and met / NOT met."""
    rows = result["rows"]
    lines = []
    for name, by_algo in rows.items():
        if name.startswith("expert_"):
            best_algo, best = max(((a, r["truth"]["mean"]) for a, r in by_algo.items()), key=lambda x: x[1])
            lines.append(f"{name}: best {best_algo.upper()} {best:.1f} >= 200: {'met' if best >= 200 else 'NOT met'}")
    expert_logger = rows.get("expert_100%", {}).get("dqn", {}).get("logging", {}).get("mean")
    for name in ("expert_80%", "expert_100%"):
        if name in rows and expert_logger is not None:
            offline = max(rows[name][a]["truth"]["mean"] for a in ("cql", "bcq") if a in rows[name])
            lines.append(f"{name}: max(CQL, BCQ) {offline:.1f} >= the expert logger's own value {expert_logger:.1f}: "
                         f"{'met' if offline >= expert_logger else 'NOT met'}")
    return lines


def print_sweep_table(result: dict[str, Any], file: Any = None) -> None:
    """One row per log: the logger's true value, then per algorithm the learned policy's true return | DR | WDR."""
    print = functools.partial(builtins.print, file=file or sys.stdout)  # noqa: A001
    expert = result["expert"]["truth"]
    print(f"data quality on sweet_bitter: {result['episodes']} logged episodes per row; expert = the sample "
          f"config's DQN ({expert['mean']:.1f} greedy) served epsilon-greedy (eps {EXPERT_EPSILON}); "
          f"CQL alpha {ALGORITHMS['cql']['cql_alpha']:g}, BCQ threshold {ALGORITHMS['bcq']['bcq_threshold']:g}; "
          "true = simulator (2000 episodes), DR / WDR of the learned policy ('!': truth outside its 95% interval)")
    head = "".join(f" | {a.upper() + ' true':>8s} {'DR':>7s} {'WDR':>7s}" for a in ALGORITHMS)
    print(f"{'logs':16s} {'logger':>7s}{head}")
    for name, by_algo in result["rows"].items():
        logger = next(iter(by_algo.values()))["logging"]["mean"]
        cells = "".join(f" | {r['truth']['mean']:8.1f} {_estimate(r['DR'], r['truth']['mean'])} "
                        f"{_estimate(r['WDR'], r['truth']['mean'])}" for r in by_algo.values())
        print(f"{name:16s} {logger:7.1f}{cells}")
    for line in targets(result):
        print(f"  target {line}")
