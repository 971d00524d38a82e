"""workflow.iterate: the closed loop on the simulator, K rounds of serve -> learn -> evaluate -> promote.

Round k starts the policy server (a child process on a free loopback port) on the incumbent's export with
epsilon-greedy exploration (until a first promotion: the uniform random policy), and simulated users call it over HTTP for
``iterate.episodes_per_round`` episodes. SIGTERM flushes the server's decision log, which is the round's mdp
table; timeline -> normalization -> training table -> train -> export -> CPE run on it under
``<output_dir>/iterate/round_<k>``. The candidate is promoted (its export swapped into the served directory, as
``workflow.export`` does: a running server would hot-reload it) only if its CPE lower bound beats the incumbent's
estimate. ``<output_dir>/iterate/report.{json,png}``: per round the true returns (simulator), the CPE estimate
with its interval and the decision.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from reagent_recsys.artifacts import atomic_directory, write_json_atomic
from reagent_recsys.config import ConfigError, PipelineConfig, validate_config
from reagent_recsys.evaluation.ground_truth import GroundTruth
from reagent_recsys.export import METADATA_FILE
from reagent_recsys.serving.loop import bootstrap_export, run_episodes, should_promote
from reagent_recsys.serving.process import ServerProcess
from workflow.registry import get_workflow

STAGES = ("workflow.timeline_operator", "workflow.identify_normalization", "workflow.training_table",
          "workflow.train", "workflow.export", "workflow.evaluate")


def round_config(config: PipelineConfig, round_dir: Path) -> PipelineConfig:
    """The pipeline config of one round: output under round_dir, the round's decision log as the mdp table."""
    data = config.model_dump(mode="json")
    data["output_dir"] = str(round_dir)
    data["timeline"]["input_path"] = str(round_dir / "mdp")
    return validate_config(data, source=f"iterate round {round_dir.name}")


def serve_round(config: PipelineConfig, served: Path, round_dir: Path, index: int, epsilon: float) -> np.ndarray:
    """Serve one round's simulated users over HTTP; returns their returns. The log lands in round_dir/mdp."""
    cfg = config.iterate
    metadata = json.loads((served / METADATA_FILE).read_text())
    server = ServerProcess(round_dir / "server", round_dir, seed=config.seed + index, export_dir=str(served),
                           log_dir=str(round_dir / "mdp"), exploration="epsilon_greedy", epsilon=epsilon,
                           allow_missing_features=True, reload_seconds=0, feedback_timeout_seconds=86400,
                           max_batch=cfg.batch_size, flush={"max_rows": 100_000, "max_seconds": 5})
    with server:
        client = server.client(timeout=600)
        try:
            returns = run_episodes(client, config.env, metadata, cfg.episodes_per_round, cfg.batch_size,
                                   seed=config.seed * 1000 + index, prefix=f"r{index}")
        finally:
            client.close()
        code = server.stop()
    if code not in (0, -15):
        raise RuntimeError(f"the round {index} server exited with {code}: {server.stderr()[-2000:]}")
    return returns


def iterate(config: PipelineConfig) -> dict[str, Any]:
    """Run `iterate.rounds` rounds; returns the per-round summary also written to iterate/report.json."""
    if config.env is None:
        raise ConfigError("env: workflow.iterate simulates users and needs an `env` section")
    cfg = config.iterate
    root = config.paths.iterate
    served = root / "served" / "export"
    bootstrap_export(config.env, served)
    incumbent: dict[str, Any] = {"round": 0, "policy": "uniform random (bootstrap)", "estimate": None,
                                 "true_return": None}
    rounds: list[dict[str, Any]] = []
    started = time.perf_counter()
    for k in range(1, cfg.rounds + 1):
        round_dir = root / f"round_{k}"
        if round_dir.exists():
            shutil.rmtree(round_dir)
        epsilon = 1.0 if incumbent["round"] == 0 else cfg.epsilon  # the bootstrap is served as the uniform policy
        print(f"[iterate] round {k}/{cfg.rounds}: serving {incumbent['policy']} (epsilon {epsilon:g})",
              file=sys.stderr, flush=True)
        served_truth = GroundTruth.from_returns("served", serve_round(config, served, round_dir, k, epsilon))
        if incumbent["estimate"] is None:  # epsilon 1 on the bootstrap: the served policy IS the incumbent
            incumbent["estimate"] = incumbent["true_return"] = served_truth.mean
        rc = round_config(config, round_dir)
        for name in STAGES:
            print(f"[iterate] round {k}: {name}", file=sys.stderr, flush=True)
            get_workflow(name).load()(rc)
        report = json.loads((round_dir / "evaluation" / "report.json").read_text())
        policy = report["policies"][0]  # the exported candidate
        estimate = next(e for e in policy["sequential"] if e["name"] == cfg.estimator)
        candidate_truth = policy["truth"]["sequential"]
        promoted = should_promote(estimate["lower"], incumbent["estimate"])
        rounds.append({
            "round": k, "episodes": cfg.episodes_per_round, "epsilon": epsilon,
            "served": {"policy": incumbent["policy"], "true_return_with_exploration": served_truth.to_dict(),
                       "incumbent_true_return": incumbent["true_return"], "incumbent_estimate": incumbent["estimate"]},
            "candidate": {"true_return": candidate_truth, "estimator": cfg.estimator, "estimate": estimate["value"],
                          "lower": estimate["lower"], "upper": estimate["upper"]},
            "promoted": promoted,
            "rule": f"{cfg.estimator} lower {estimate['lower']} > incumbent estimate {incumbent['estimate']}",
            "seconds": round(time.perf_counter() - started, 1),
        })
        if promoted:
            with atomic_directory(served) as tmp:
                shutil.copytree(round_dir / "export", tmp, dirs_exist_ok=True)
            incumbent = {"round": k, "policy": f"round {k} candidate", "estimate": estimate["value"],
                         "true_return": candidate_truth}
        print(f"[iterate] round {k}: candidate {cfg.estimator} {estimate['value']:.1f} "
              f"[{estimate['lower']:.1f}, {estimate['upper']:.1f}], true {candidate_truth:.1f}; "
              f"{'PROMOTED' if promoted else 'kept the incumbent'}", file=sys.stderr, flush=True)
        summary = {"rounds": rounds, "incumbent": incumbent, "config": config.iterate.model_dump(mode="json")}
        write_json_atomic(root / "report.json", summary)
        write_figure(root / "report.png", rounds)
    return {"report": str(root / "report.json"), "incumbent": incumbent,
            "rounds": [{"round": r["round"], "promoted": r["promoted"], "candidate_true": r["candidate"]["true_return"],
                        "estimate": r["candidate"]["estimate"]} for r in rounds]}


def write_figure(path: Path, rounds: list[dict[str, Any]]) -> None:
    """Per round: the served policy's and the candidate's true returns, the candidate's CPE interval, promotions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = np.array([r["round"] for r in rounds])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(k, [r["served"]["incumbent_true_return"] for r in rounds], "s-", color="gray",
            label="incumbent, true")
    ax.plot(k, [r["candidate"]["true_return"] for r in rounds], "o-", color="C0", label="candidate, true")
    estimates = np.array([r["candidate"]["estimate"] for r in rounds])
    lower = np.array([r["candidate"]["lower"] for r in rounds])
    upper = np.array([r["candidate"]["upper"] for r in rounds])
    ax.errorbar(k + 0.05, estimates, yerr=[estimates - lower, upper - estimates], fmt="D", color="C1", capsize=4,
                label=f"candidate, {rounds[0]['candidate']['estimator']} [95%]")
    for r in rounds:
        if r["promoted"]:
            ax.annotate("promoted", (r["round"], r["candidate"]["true_return"]), textcoords="offset points",
                        xytext=(0, 8), ha="center", color="C2")
    ax.set_xlabel("round")
    ax.set_ylabel("return per episode")
    ax.set_xticks(k)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
