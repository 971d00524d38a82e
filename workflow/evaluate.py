"""workflow.evaluate: counterfactual evaluation of ``evaluation.policies`` on the eval split -> report.json + .png.

The CPE library (``reagent_recsys.evaluation.pipeline``) fits the reward model and each policy's FQE (with
refits), runs every estimator, judges each one's trust and ranks the candidates against the logging policy.
With an ``env`` the simulator's ground truth is added (``evaluation.simulated``); without one (a logs run) the
report holds CPE only and its training curve is the per-epoch CPE of the checkpoints.
Everything lands in ``<output_dir>/evaluation/`` in one atomic rename.
"""

from __future__ import annotations

import time
from typing import Any

from reagent_recsys.config import PipelineConfig
from reagent_recsys.data.loaders import read_table_metadata
from reagent_recsys.evaluation.checkpoints import checkpoint_policies, cpe_curve
from reagent_recsys.evaluation.inputs import read_features_description, read_split, state_layout
from reagent_recsys.evaluation.pipeline import run_cpe
from reagent_recsys.evaluation.progress import Progress
from reagent_recsys.evaluation.report import summarize, warnings_of, write_report
from reagent_recsys.evaluation.targets import build_targets, check_policy_paths


def evaluate(config: PipelineConfig) -> dict[str, Any]:
    """Evaluate the configured policies; write <output_dir>/evaluation; return the key figures and a summary."""
    started, progress = time.perf_counter(), Progress("evaluate")
    cfg, paths = config.evaluation, config.paths
    check_policy_paths(cfg.policies, paths.export)
    table_dir = paths.training_table
    manifest = read_table_metadata(table_dir / "eval")
    table_ids, action_names = [int(f) for f in manifest["feature_ids"]], [str(a) for a in manifest["action_names"]]
    with progress.step("reading the training table"):
        train, evaluation = read_split(table_dir / "train"), read_split(table_dir / "eval")
    targets, scripted = build_targets(cfg.policies, paths.export, train, evaluation, table_ids, action_names)
    description = read_features_description(config.paths.features_description)
    layout = state_layout(table_ids, description, action_names)
    report = run_cpe(cfg, config.seed, train, evaluation, targets, layout, progress).to_dict()

    metadata = scripted.get(cfg.policies[0].name, (None, {}))[1]
    checkpoints = checkpoint_policies(paths.checkpoints, paths.normalization, metadata)
    if config.simulated:
        from reagent_recsys.evaluation.simulated import attach_truth, simulated_truth

        truth = simulated_truth(config, scripted, evaluation, {t.name: t.eval_probs for t in targets}, table_ids,
                                action_names, checkpoints, progress)
        report = attach_truth(report, truth)
    else:
        report["training_curve"] = cpe_curve(evaluation, table_ids, metadata, checkpoints, cfg.gamma, config.seed,
                                             progress)
        report["training_curve_source"] = "per-epoch CPE"
        report["training_curve_note"] = ("per-epoch CPE of each checkpoint's greedy policy (WDR with its own Q as "
                                         "the model, WPDIS); no simulator, so no true returns")
    report["summary"], report["warnings"] = summarize(report), warnings_of(report)
    report["seconds"] = round(time.perf_counter() - started, 2)
    with progress.step("writing report.json and report.png"):
        written = write_report(paths.evaluation, report)
    for line in (report["summary"]["verdict"], *report["warnings"]):
        progress.line(line)
    return {**_key_figures(report), **written, "summary": report["summary"], "warnings": report["warnings"],
            "seconds": report["seconds"]}


def _key_figures(report: dict[str, Any]) -> dict[str, Any]:
    """The headline policy's one-step DR, sequential DR and WDR (and its true return when simulated)."""
    policy = report["policies"][0]
    value = {f"{s}/{e['name']}": e["value"] for s in ("one_step", "sequential") for e in policy[s]}
    figures = {"one_step_DR": value.get("one_step/DR"), "sequential_DR": value.get("sequential/DR"),
               "WDR": value.get("sequential/WDR")}
    if "ground_truth" in report:
        truth = next((t for t in report["ground_truth"]["policies"] if t["name"] == policy["name"]), None)
        figures.update(true_return=truth, one_step_truth=policy["truth"]["one_step"])
    return figures
