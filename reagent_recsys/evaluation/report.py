"""The evaluation report: ``report.json`` (every number) and ``report.png`` (three panels), written atomically.

Panels: (left) the policy's true return per training epoch against the baselines' true returns; (middle) the
sequential estimators' values and intervals against the target policy's true (discounted) return; (right) the
one-step estimators against the true one-step value on the logged contexts (when it is computable).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from reagent_recsys.artifacts import atomic_directory, write_json_atomic  # noqa: E402

REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
_BASELINE_STYLE = {"logging": ("tab:gray", "--"), "random": ("tab:orange", ":"),
                   "always_sweetest": ("tab:red", "-."), "always_bitterest": ("tab:green", "-.")}


def with_truth(estimate: dict[str, Any], truth: float | None) -> dict[str, Any]:
    """An estimate's dict plus the true value beside it and whether the truth lies inside its interval."""
    inside = None
    if truth is not None and estimate.get("lower") is not None and estimate.get("upper") is not None:
        inside = bool(estimate["lower"] <= truth <= estimate["upper"])
    return {**estimate, "truth": truth, "truth_in_interval": inside}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _plot_curve(ax: Any, report: dict[str, Any]) -> None:
    curve = report.get("training_curve") or []
    truth = {row["name"]: row for row in report.get("ground_truth", {}).get("policies", [])}
    if curve:
        epochs = [p["epoch"] for p in curve]
        means = [p["mean"] for p in curve]
        errs = [1.959963984540054 * (p["stderr"] or 0.0) for p in curve]
        ax.errorbar(epochs, means, yerr=errs, marker="o", color="tab:blue", capsize=3, label="policy (checkpoints)")
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.text(0.5, 0.5, "no per-epoch checkpoints", ha="center", va="center", transform=ax.transAxes)
    if "policy" in truth:
        ax.axhline(truth["policy"]["mean"], color="tab:blue", lw=1.5, label=f"served policy {truth['policy']['mean']:.1f}")
    for name, (color, style) in _BASELINE_STYLE.items():
        if name in truth:
            ax.axhline(truth[name]["mean"], color=color, ls=style, lw=1.2, label=f"{name} {truth[name]['mean']:.1f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"true mean return (gamma={report['gamma']:g})")
    ax.set_title("Return in the simulator")
    ax.legend(fontsize=7, loc="best")


def _plot_estimates(ax: Any, section: dict[str, Any] | None, title: str, truth_label: str) -> None:
    if not section or not section.get("estimates"):
        ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        return
    estimates = section["estimates"]
    xs = range(len(estimates))
    for x, e in enumerate(estimates):
        if not _finite(e.get("value")):
            continue
        lo = e["value"] - e["lower"] if _finite(e.get("lower")) else 0.0
        hi = e["upper"] - e["value"] if _finite(e.get("upper")) else 0.0
        color = {True: "tab:green", False: "tab:red"}.get(e.get("truth_in_interval"), "tab:blue")
        ax.errorbar([x], [e["value"]], yerr=[[max(lo, 0.0)], [max(hi, 0.0)]], fmt="o", color=color, capsize=4)
    truth = section.get("truth")
    if _finite(truth):
        ax.axhline(truth, color="black", lw=1.2, label=f"{truth_label} {truth:.2f}")
    band = section.get("truth_interval")
    if band and all(_finite(b) for b in band):
        ax.axhspan(band[0], band[1], color="black", alpha=0.12, lw=0)
    baseline = estimates[0].get("baseline")
    if _finite(baseline):
        ax.axhline(baseline, color="tab:gray", ls="--", lw=1.0, label=f"logged {baseline:.2f}")
    ax.set_xticks(list(xs), [e["name"] for e in estimates], rotation=30, fontsize=8)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """Draw the three panels of `report` into the PNG at `path`."""
    fig, axes = plt.subplots(1, 3, figsize=(17, 5.2), gridspec_kw={"width_ratios": [1.2, 1, 1]})
    try:
        _plot_curve(axes[0], report)
        _plot_estimates(axes[1], report.get("sequential"), f"Sequential CPE (gamma={report['gamma']:g}), "
                        "green: truth inside", "true return")
        one_step = report.get("one_step")
        label = "true one-step value" if one_step and _finite(one_step.get("truth")) else "truth n/a"
        _plot_estimates(axes[2], one_step, "One-step CPE (reward per decision), green: truth inside", label)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def write_report(directory: str | Path, report: dict[str, Any]) -> dict[str, str]:
    """Write report.json and report.png into `directory` in one atomic rename; return their paths."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        write_json_atomic(tmp / REPORT_JSON, report)
        plot_report(report, tmp / REPORT_PNG)
    return {"report_json": str(directory / REPORT_JSON), "report_png": str(directory / REPORT_PNG)}
