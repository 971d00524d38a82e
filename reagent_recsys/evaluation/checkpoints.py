"""The training curve's inputs: the trainer's per-epoch checkpoints as policies with the exported signature, and
their cheap per-epoch CPE (without a simulator, the curve is this: no simulated returns are invented)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reagent_recsys.evaluation.epoch_cpe import EpochCPE, EvalSplit
from reagent_recsys.evaluation.inputs import Split
from reagent_recsys.evaluation.progress import QUIET, Progress
from reagent_recsys.evaluation.targets import feature_index

CURVE_ESTIMATORS = ("sequential/WDR", "sequential/WPDIS")


def checkpoint_policies(checkpoint_dir: Path, normalization_path: Path, metadata: dict[str, Any]
                        ) -> list[tuple[int, torch.nn.Module]]:
    """(epoch, policy with the exported signature) for each per-epoch checkpoint in `checkpoint_dir`."""
    from reagent_recsys.export import ExportedPolicy
    from reagent_recsys.normalization import NormalizationArtifact, Preprocessor
    from reagent_recsys.training.trainer import CHECKPOINT_RE, ModelSpec, load_checkpoint

    paths = sorted(p for p in Path(checkpoint_dir).glob("epoch_*.pt") if CHECKPOINT_RE.match(p.name))
    if not paths or not metadata or not Path(normalization_path).exists():
        return []
    artifact = NormalizationArtifact.load(normalization_path)
    if list(artifact.feature_ids) != [int(f) for f in metadata["feature_ids"]]:
        raise ValueError(f"{normalization_path}: feature_ids differ from the exported policy's; rerun workflow.export")
    policies = []
    for path in paths:
        state = load_checkpoint(path)
        model = ModelSpec(**state["spec"]).build()
        model.load_state_dict(state["model"])
        policy = ExportedPolicy(Preprocessor(artifact), model.eval(), metadata["export_config"]["temperature"],
                                metadata["training_config"].get("bcq_threshold", 0.0)).eval()
        policies.append((int(state["epoch"]), policy))
    return policies


@torch.no_grad()
def cpe_curve(evaluation: Split, table_ids: Sequence[int], metadata: dict[str, Any],
              checkpoints: list[tuple[int, torch.nn.Module]], gamma: float, seed: int,
              progress: Progress = QUIET) -> list[dict[str, Any]]:
    """Per checkpoint: the per-epoch CPE of its greedy policy (WDR with its own Q as the model, and WPDIS)."""
    if not checkpoints:
        return []
    split = EvalSplit.from_arrays(evaluation)
    cpe = EpochCPE(split, gamma, seed=seed)
    index, present = feature_index([int(f) for f in metadata["feature_ids"]], table_ids)
    state = torch.from_numpy(np.where(present, evaluation["state"][:, index], 0.0).astype(np.float32))
    presence = torch.from_numpy(np.where(present, evaluation["state_presence"][:, index], False))
    mask = torch.from_numpy(evaluation["possible_actions_mask"].astype(bool))
    curve = []
    with progress.step(f"per-epoch CPE of {len(checkpoints)} checkpoints"):
        for epoch, policy in checkpoints:
            out = policy(state, presence, mask)
            allowed = out["action_probabilities"].numpy() > 0
            found = cpe.estimate(out["q_values"].double().numpy(), allowed)
            curve.append({"epoch": epoch, **{key: found[key].to_dict() for key in CURVE_ESTIMATORS}})
    return curve
