"""The evaluation report: its summary and verdict in words, ``report.json`` and ``report.png``, written atomically.

The figure (one page): a headline with the conclusion; (a) the training curve: true return per checkpoint in the
simulator, or per-epoch CPE without one, against the logging policy (and simulated baselines); (b) the sequential
and (c) the one-step estimators of the headline policy with value labels, the truth when simulated, and the
untrusted ones greyed with a note; (d) every candidate and the logging policy ranked under the headline estimator.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from reagent_recsys.artifacts import atomic_directory, write_json_atomic  # noqa: E402

REPORT_JSON = "report.json"
REPORT_PNG = "report.png"
HEADLINE_ESTIMATORS = ("DR", "WDR")
_BASELINE_STYLE = {"logging": ("black", "--"), "random": ("tab:orange", ":"),
                   "always_sweetest": ("tab:red", "-."), "always_bitterest": ("tab:green", (0, (5, 2, 1, 2)))}
_CANDIDATE_COLORS = ("tab:blue", "tab:purple", "tab:brown", "tab:cyan", "tab:olive", "tab:pink")


def with_truth(estimate: dict[str, Any], truth: float | None) -> dict[str, Any]:
    """An estimate's dict plus the true value beside it and whether the truth lies inside its interval."""
    inside = None
    if truth is not None and estimate.get("lower") is not None and estimate.get("upper") is not None:
        inside = bool(estimate["lower"] <= truth <= estimate["upper"])
    return {**estimate, "truth": truth, "truth_in_interval": inside}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _num(x: float | None) -> str:
    return "n/a" if not _finite(x) else f"{x:.4g}" if abs(x) < 1e4 else f"{x:.3e}"


def _headline_section(policy: dict[str, Any]) -> str:
    names = {e["name"] for e in policy["sequential"]}
    return "sequential" if "DR" in names else "one_step"


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """The small JSON-able summary: the headline policy's DR/WDR with intervals, the logging policy's value, the
    truth (null without a simulator) and a one-sentence verdict."""
    policy = report["policies"][0]
    section = _headline_section(policy)
    found = {e["name"]: e for e in policy[section]}
    values = {name: {k: found[name].get(k) for k in ("value", "lower", "upper", "relative", "relative_lower",
                                                     "relative_upper")}
              for name in HEADLINE_ESTIMATORS if name in found}
    logging = report["logging"][section]["value"]
    truth = policy.get("truth", {}).get(section)
    first = next(iter(values), None)
    if first is None:
        verdict = f"{policy['name']}: no model-based estimate (see the report)"
    else:
        est = values[first]
        key = f"{section}/{first}"
        unresolved = report["ranking"].get(key, {}).get("not_separated", [])
        relation = "better than" if est["value"] > logging else "worse than"
        if sorted([policy["name"], "logging"]) in [sorted(pair) for pair in unresolved]:
            relation = "not distinguishable from"
        rel = est.get("relative")
        ratio = f" ({rel:.2f}x)" if _finite(rel) and logging > 0 else ""
        verdict = (f"{policy['name']} ≈ {_num(est['value'])} [{_num(est['lower'])}, {_num(est['upper'])}] by {first}"
                   f"{ratio}: {relation} the logging policy's {_num(logging)}")
        if _finite(truth):
            inside = [n for n, e in values.items() if _finite(e["lower"]) and e["lower"] <= truth <= e["upper"]]
            outside = [n for n in values if n not in inside]
            verdict += (f"; the simulator's truth {_num(truth)} is inside the intervals of {' and '.join(inside)}"
                        if inside else f"; the simulator's truth {_num(truth)}")
            verdict += f" and outside {' and '.join(outside)}'s" if inside and outside else (
                f" is outside {' and '.join(outside)}'s intervals" if outside else "")
        verdict += "."
    return {"policy": {"name": policy["name"], "section": section, **values}, "logging": logging,
            "truth": truth if _finite(truth) else None, "verdict": verdict}


def warnings_of(report: dict[str, Any]) -> list[str]:
    """One line per (policy, estimator) that should not be trusted."""
    return [f"{p['name']} {key}: {t['why']}" for p in report["policies"] for key, t in p["trust"].items()
            if t["level"] == "untrusted"]


# --------------------------------------------------------------------------------------------- figure
def _plot_curve(ax: Any, report: dict[str, Any]) -> None:
    curve = report.get("training_curve") or []
    simulated = report.get("training_curve_source") == "simulator"
    if curve:
        epochs = [p["epoch"] for p in curve]
        if simulated:
            means = [p["mean"] for p in curve]
            lows = [p["mean"] - (p["lower"] if _finite(p.get("lower")) else p["mean"]) for p in curve]
            highs = [(p["upper"] if _finite(p.get("upper")) else p["mean"]) - p["mean"] for p in curve]
            label = "checkpoint, true return"
        else:
            key = "sequential/WDR"
            means = [p[key]["value"] for p in curve]
            lows = [max(p[key]["value"] - (p[key]["lower"] or p[key]["value"]), 0) for p in curve]
            highs = [max((p[key]["upper"] or p[key]["value"]) - p[key]["value"], 0) for p in curve]
            label = "checkpoint, WDR (own Q)"
        ax.errorbar(epochs, means, yerr=[lows, highs], marker="o", color="tab:blue", capsize=3, label=label)
        for x, y in zip(epochs, means, strict=True):
            ax.annotate(_num(y), (x, y), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=7)
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        ax.text(0.5, 0.5, "no per-epoch checkpoints", ha="center", va="center", transform=ax.transAxes)
    lines = {t["name"]: t["mean"] for t in report.get("ground_truth", {}).get("policies", [])}
    if not simulated:
        lines = {"logging": report["logging"]["sequential"]["value"]}
    merged: dict[str, tuple[list[str], float]] = {}  # equal values share one line (else one hides the other)
    for name, value in lines.items():
        same = next((k for k, (_, v) in merged.items() if abs(v - value) <= 0.005 * max(abs(v), 1e-9)), None)
        if same is None:
            merged[name] = ([name], value)
        else:
            merged[same][0].append(name)
    for i, (name, (names, value)) in enumerate(merged.items()):
        color, style = _BASELINE_STYLE.get(name, (_CANDIDATE_COLORS[i % len(_CANDIDATE_COLORS)], "-"))
        ax.axhline(value, color=color, ls=style, lw=1.4, label=f"{' = '.join(names)} {_num(value)}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{'true' if simulated else 'estimated'} mean return (gamma={report['gamma']:g})")
    ax.set_title("(a) Training curve: " + ("simulated return per checkpoint" if simulated else
                                           "per-epoch CPE per checkpoint (no simulator)"), fontsize=10)
    ax.legend(fontsize=7, loc="best", ncol=2)


def _plot_estimates(ax: Any, report: dict[str, Any], section: str, title: str, ylabel: str) -> None:
    policy = report["policies"][0]
    estimates = [e for e in policy[section] if _finite(e.get("value"))]
    if not estimates:
        ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        return
    trust = policy["trust"]
    truth = policy.get("truth", {}).get(section)
    notes = []
    for x, e in enumerate(estimates):
        verdict = trust.get(f"{section}/{e['name']}", {})
        level = verdict.get("level", "ok")
        lo = max(e["value"] - e["lower"], 0.0) if _finite(e.get("lower")) else 0.0
        hi = max(e["upper"] - e["value"], 0.0) if _finite(e.get("upper")) else 0.0
        color = {"untrusted": "tab:gray", "caution": "tab:orange"}.get(level, "tab:blue")
        if _finite(truth) and level != "untrusted":
            color = "tab:green" if e.get("truth_in_interval") else "tab:red"
        ax.errorbar([x], [e["value"]], yerr=[[lo], [hi]], fmt="o", color=color, capsize=4,
                    mfc="white" if level == "untrusted" else color)
        ax.annotate(_num(e["value"]), (x, e["value"]), textcoords="offset points", xytext=(6, 0), fontsize=7,
                    va="center")
        if level == "untrusted":
            notes.append(f"{e['name']}: {verdict['why'].split(';')[0]}")
    if _finite(truth):
        ax.axhline(truth, color="tab:green", lw=1.5, label=f"truth {_num(truth)}")
    logging = report["logging"][section]["value"]
    ax.axhline(logging, color="black", ls="--", lw=1.2, label=f"logging {_num(logging)}")
    ax.set_xticks(range(len(estimates)), [e["name"] for e in estimates], rotation=20, fontsize=8)
    ax.set_xlim(-0.5, len(estimates) - 0.2)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    if notes:  # under the axis, where no point can hide them
        ax.set_xlabel("\n".join(textwrap.shorten(n, 95) for n in notes), fontsize=7.5, color="dimgray")
    ax.legend(fontsize=7, loc="best")


def _plot_ranking(ax: Any, report: dict[str, Any]) -> None:
    summary = report["summary"]
    estimator = next((n for n in HEADLINE_ESTIMATORS if n in summary["policy"]), None)
    key = f"{summary['policy']['section']}/{estimator}"
    ranking = report["ranking"].get(key)
    if ranking is None:
        ax.text(0.5, 0.5, "no ranking", ha="center", va="center", transform=ax.transAxes)
        return
    order = ranking["order"][::-1]  # best on top
    truth = {t["name"]: t["mean"] for t in report.get("ground_truth", {}).get("policies", [])}
    for y, row in enumerate(order):
        color = "black" if row["name"] == "logging" else "tab:blue"
        lo = max(row["value"] - row["lower"], 0.0) if _finite(row.get("lower")) else 0.0
        hi = max(row["upper"] - row["value"], 0.0) if _finite(row.get("upper")) else 0.0
        ax.errorbar([row["value"]], [y], xerr=[[lo], [hi]], fmt="s", color=color, capsize=4)
        ax.annotate(_num(row["value"]), (row["value"], y), textcoords="offset points", xytext=(0, 7), fontsize=7,
                    ha="center")
        if _finite(truth.get(row["name"])):
            ax.plot([truth[row["name"]]], [y], marker="*", color="tab:green", ms=10, ls="none",
                    label="truth" if y == 0 or "truth" not in ax.get_legend_handles_labels()[1] else None)
    ax.set_yticks(range(len(order)), [r["name"] for r in order], fontsize=8)
    ax.set_xlabel(f"{estimator} estimate of the mean return (gamma={report['gamma']:g})")
    ax.set_ylabel("policy")
    unresolved = ["~".join(pair) for pair in ranking["not_separated"]]
    ax.set_title(f"(d) Ranking by {estimator}" + (f"; not separated: {', '.join(unresolved[:4])}"
                                                 if unresolved else "; every pair separated"), fontsize=10)
    if truth:
        ax.legend(fontsize=7, loc="best")


def plot_report(report: dict[str, Any], path: str | Path) -> None:
    """Draw the one-page figure of `report` into the PNG at `path`."""
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    try:
        fig.suptitle(textwrap.fill(report["summary"]["verdict"], 130), fontsize=12, fontweight="bold")
        _plot_curve(axes[0, 0], report)
        legend = "green: truth inside, red: outside; " if "ground_truth" in report else ""
        _plot_estimates(axes[0, 1], report, "sequential", f"(b) Sequential CPE of {report['policies'][0]['name']}\n"
                        f"({legend}orange: caution, grey hollow: do not trust)", f"mean return (gamma={report['gamma']:g})")
        _plot_estimates(axes[1, 0], report, "one_step", f"(c) One-step CPE of {report['policies'][0]['name']} "
                        "(reward per decision)", "mean reward per decision")
        _plot_ranking(axes[1, 1], report)
        fig.tight_layout(rect=(0, 0, 1, 0.95))
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def write_report(directory: str | Path, report: dict[str, Any]) -> dict[str, str]:
    """Write report.json and report.png into `directory` in one atomic rename; return their paths."""
    directory = Path(directory)
    with atomic_directory(directory) as tmp:
        write_json_atomic(tmp / REPORT_JSON, report)
        plot_report(report, tmp / REPORT_PNG)
    return {"report_json": str(directory / REPORT_JSON), "report_png": str(directory / REPORT_PNG)}
