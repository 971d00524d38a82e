"""The workflows `cli.py run` can start, by name, in pipeline order.

Names resolve only through this table, never as import paths: `workflow.train` or its short name `train`.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reagent_recsys.config import PipelineConfig


@dataclass(frozen=True)
class Workflow:
    name: str
    module: str
    function: str
    summary: str

    @property
    def short_name(self) -> str:
        return self.name.removeprefix("workflow.")

    def load(self) -> Callable[[PipelineConfig], Any]:
        return getattr(importlib.import_module(self.module), self.function)


WORKFLOWS: dict[str, Workflow] = {
    w.name: w
    for w in (
        Workflow("workflow.offline_gym", "workflow.offline_gym", "offline_gym",
                 "Simulate users with a logging policy and write the mdp table."),
        Workflow("workflow.import_logs", "workflow.import_logs", "import_logs",
                 "Read your decision logs (CSV, JSON lines, Parquet) or RLlib offline JSON into the mdp table (Spark)."),
        Workflow("workflow.timeline_operator", "workflow.timeline_operator", "timeline_operator",
                 "Validate the mdp table and write n-step transitions split into train/eval (Spark)."),
        Workflow("workflow.identify_normalization", "workflow.identify_normalization", "identify_normalization",
                 "Per-feature statistics of timeline/train -> normalization.json (types and parameters; Spark)."),
        Workflow("workflow.training_table", "workflow.training_table", "training_table",
                 "Timeline + normalization.json -> the dense, numeric training table (Spark)."),
        Workflow("workflow.train", "workflow.train", "train",
                 "DQN/CQL/BCQ on training_table/train -> training/model.pt, checkpoints, TensorBoard."),
        Workflow("workflow.export", "workflow.export", "export",
                 "training/model.pt + normalization.json -> export/policy.pt (TorchScript) + metadata.json."),
        Workflow("workflow.evaluate", "workflow.evaluate", "evaluate",
                 "CPE of export/policy.pt and candidates on the eval split (+ simulator truth) -> evaluation/report.*."),
        Workflow("workflow.serve", "workflow.serve", "serve",
                 "Serve export/policy.pt over HTTP (/v1/act, /v1/feedback); log decisions as an mdp table."),
        Workflow("workflow.iterate", "workflow.iterate", "iterate",
                 "Closed loop on the simulator: serve over HTTP, learn from the log, promote by CPE; K rounds."),
        Workflow("workflow.end_to_end", "workflow.end_to_end", "end_to_end",
                 "Every stage in order from one YAML, skipping stages whose output is up to date."),
    )
}


class UnknownWorkflowError(ValueError):
    pass


def get_workflow(name: str) -> Workflow:
    """The workflow called `name` (full or short name); an unknown name gets a did-you-mean."""
    full = name if name in WORKFLOWS else f"workflow.{name}"
    if full in WORKFLOWS:
        return WORKFLOWS[full]
    names = [*WORKFLOWS, *(w.short_name for w in WORKFLOWS.values())]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else f"available: {', '.join(w.short_name for w in WORKFLOWS.values())}"
    raise UnknownWorkflowError(f"unknown workflow {name!r}; {hint} (`list` shows them all)")
