"""workflow.export: training/model.pt + normalization.json -> export/{policy.pt, metadata.json}.

policy.pt is TorchScript (loads with torch alone); see reagent_recsys.export for its inputs and outputs.
"""

from __future__ import annotations

from typing import Any

from reagent_recsys.config import PipelineConfig
from reagent_recsys.export import export_policy


def export(config: PipelineConfig) -> dict[str, Any]:
    """Script the trained policy with its normalization and write it with its metadata (atomically)."""
    return export_policy(config)
