"""The end of a run, for a person: one table of stages in pipeline order with their key figures, and the verdict.

`format_run_summary` takes what a workflow returned (``workflow.end_to_end`` returns every stage's result) and
never fails on a missing figure: a stage shows what its result holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Result = dict[str, Any]


def _num(value: Any, digits: int = 1) -> str:
    if isinstance(value, bool) or value is None:
        return "?"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, dict):  # per split
        return " / ".join(f"{name} {_num(v, digits)}" for name, v in value.items())
    return str(value)


def _offline_gym(r: Result) -> str:
    return (f"{_num(r.get('episodes'))} episodes, {_num(r.get('rows'))} rows, "
            f"logged mean return {_num(r.get('mean_episode_return'))}")


def _timeline(r: Result) -> str:
    dropped = sum((r.get("rows_dropped") or {}).values())
    return f"{_num(r.get('rows_in'))} rows in -> {_num(r.get('rows_out'))} transitions, {_num(dropped)} dropped"


def _normalization(r: Result) -> str:
    types = ", ".join(f"{t} {n}" for t, n in sorted((r.get("types") or {}).items()))
    return f"{_num(r.get('features'))} features ({types or 'no types'}), output width {_num(r.get('output_dim'))}"


def _training_table(r: Result) -> str:
    return f"{_num(r.get('rows'))} rows, {_num(r.get('features'))} features, {_num(r.get('actions'))} actions"


def _train(r: Result) -> str:
    parts = [f"{r.get('algorithm', '?')}"]
    if r.get("epochs") is not None:
        parts.append(f"{_num(r.get('epochs'))} epochs")
    if r.get("updates") is not None:
        parts.append(f"{_num(r.get('updates'))} updates")
    td_loss = (r.get("last_logged") or {}).get("td_loss")
    if td_loss is not None:
        parts.append(f"last TD loss {_num(td_loss, 3)}")
    if r.get("world_size", 1) and r.get("world_size", 1) > 1:
        parts.append(f"{r['world_size']} processes")
    return ", ".join(parts)


def _export(r: Result) -> str:
    return f"{r.get('policy', '?')} ({_num(r.get('num_features'))} features, {_num(r.get('num_actions'))} actions)"


def _interval(estimate: dict[str, Any]) -> str:
    return f"{_num(estimate.get('value'))} [{_num(estimate.get('lower'))}, {_num(estimate.get('upper'))}]"


def _evaluate(r: Result) -> str:
    summary = r.get("summary") if isinstance(r.get("summary"), dict) else {}
    policy = summary.get("policy") or {}
    parts = [f"{name} {_interval(policy[name])}" for name in ("DR", "WDR") if isinstance(policy.get(name), dict)]
    if not parts:
        parts = [f"DR {_num(r.get('sequential_DR'))}", f"WDR {_num(r.get('WDR'))}"]
    if summary.get("logging") is not None:
        parts.append(f"logging policy {_num(summary['logging'])}")
    truth = summary.get("truth")
    if truth is None and isinstance(r.get("true_return"), dict):
        truth = r["true_return"].get("mean")
    if truth is not None:
        parts.append(f"truth {_num(truth)}")
    return ", ".join(parts)


def _import_logs(r: Result) -> str:
    return (f"{_num(r.get('rows_in'))} decisions read, {_num(r.get('rows'))} kept in {_num(r.get('episodes'))} episodes, "
            f"{_num(r.get('features'))} features, {_num(r.get('actions'))} actions")


KEY_FIGURES: dict[str, Callable[[Result], str]] = {
    "workflow.offline_gym": _offline_gym,
    "workflow.import_logs": _import_logs,
    "workflow.timeline_operator": _timeline,
    "workflow.identify_normalization": _normalization,
    "workflow.training_table": _training_table,
    "workflow.train": _train,
    "workflow.export": _export,
    "workflow.evaluate": _evaluate,
}


def key_figures(workflow: str, result: Any) -> str:
    """One line of the figures that matter for `workflow`'s result (empty when unknown)."""
    if not isinstance(result, dict):
        return ""
    describe = KEY_FIGURES.get(workflow)
    try:
        return describe(result) if describe else ""
    except (TypeError, ValueError, AttributeError, KeyError):
        return ""


def verdict_lines(evaluate_result: Any) -> list[str]:
    """The evaluation's conclusion in words (from its `summary`), or nothing."""
    summary = evaluate_result.get("summary") if isinstance(evaluate_result, dict) else None
    if not isinstance(summary, dict):
        return []
    lines = [str(summary["verdict"])] if summary.get("verdict") else []
    return lines + [f"warning: {w}" for w in evaluate_result.get("warnings", [])]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.1f}s" if seconds < 60 else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def format_run_summary(workflow: str, result: Any, seconds: float, output_dir: str) -> str:
    """The human summary printed at the end of `cli.py run`."""
    lines = [f"{workflow} finished in {_duration(seconds)}; outputs in {output_dir}"]
    stages = result.get("stages") if isinstance(result, dict) and workflow == "workflow.end_to_end" else None
    if stages is None:
        figures = key_figures(workflow, result)
        if figures:
            lines.append(f"  {figures}")
        lines += [f"  {line}" for line in verdict_lines(result if workflow == "workflow.evaluate" else None)]
        return "\n".join(lines)
    rows = [("#", "stage", "status", "time", "key figures")]
    for index, stage in enumerate(stages, start=1):
        status = f"{stage.get('status', '?')}: {stage.get('reason', '')}".rstrip(": ")
        rows.append((str(index), stage["workflow"].removeprefix("workflow."), status,
                     _duration(stage.get("seconds")) if stage.get("status") == "ran" else "-",
                     key_figures(stage["workflow"], stage.get("result"))))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines.append("")
    for row in rows:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4])
    evaluation = next((s.get("result") for s in stages if s["workflow"] == "workflow.evaluate"), None)
    verdict = verdict_lines(evaluation)
    if verdict:
        lines.append("")
        lines += verdict
    return "\n".join(lines)
