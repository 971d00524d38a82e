"""workflow.train: the training table + normalization.json -> <output_dir>/training/{model.pt, summary.json}.

Also a checkpoint per epoch (training/checkpoints) and TensorBoard events (training/tensorboard/<run>). A failed
run leaves the previous complete output; `--set training.resume=true` continues from the newest checkpoint;
`training.num_processes: N` > 1 launches N data-parallel processes with torchrun. See reagent_recsys.training.run.
"""

from __future__ import annotations

from typing import Any

from reagent_recsys.config import PipelineConfig
from reagent_recsys.training import run


def train(config: PipelineConfig) -> dict[str, Any]:
    """Train the policy of `config` (in this process, or in training.num_processes torchrun processes)."""
    return run.train(config)
