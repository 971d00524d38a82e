"""The workflows `cli.py run` can start, by name. Names resolve only through this table, never as import paths."""

from __future__ import annotations

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

    def load(self) -> Callable[[PipelineConfig], Any]:
        return getattr(importlib.import_module(self.module), self.function)


WORKFLOWS: dict[str, Workflow] = {
    w.name: w
    for w in (
        Workflow("workflow.offline_gym", "workflow.offline_gym", "offline_gym",
                 "Simulate users with a logging policy and write the mdp table."),
    )
}


class UnknownWorkflowError(ValueError):
    pass


def get_workflow(name: str) -> Workflow:
    try:
        return WORKFLOWS[name]
    except KeyError:
        raise UnknownWorkflowError(
            f"unknown workflow {name!r}; available: {', '.join(sorted(WORKFLOWS))}"
        ) from None
