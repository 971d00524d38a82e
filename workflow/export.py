"""workflow.export: training/model.pt + normalization.json -> export/{policy.pt, metadata.json}.

policy.pt is TorchScript (loads with torch alone); see reagent_recsys.export for its inputs and outputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from reagent_recsys.artifacts import atomic_directory, package_versions, write_json_atomic
from reagent_recsys.config import PipelineConfig
from reagent_recsys.export import METADATA_FILE, ExportedPolicy, metadata_dict, script_policy
from reagent_recsys.normalization import NormalizationArtifact, Preprocessor
from reagent_recsys.training.trainer import load_model


def export(config: PipelineConfig) -> dict[str, Any]:
    """Script the trained policy with its normalization and write it with its metadata (atomically)."""
    out = Path(config.output_dir)
    model_path = out / "training" / "model.pt"
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path}: no trained model; run workflow.train first")
    model, payload = load_model(model_path)
    artifact = NormalizationArtifact.load(out / "normalization.json")
    if list(payload["feature_ids"]) != list(artifact.feature_ids):
        raise ValueError(f"{model_path} was trained on feature_ids {payload['feature_ids'][:10]}..., "
                         f"normalization.json has {artifact.feature_ids[:10]}...; retrain")
    history = _history_block(config, artifact.feature_ids)
    policy = ExportedPolicy(Preprocessor(artifact), model, config.export.temperature,
                            config.training.bcq_threshold)
    scripted = script_policy(policy)
    metadata = metadata_dict(
        artifact.feature_ids, artifact.names, payload["action_names"], artifact.to_json(),
        config.training.model_dump(mode="json"), config.export.model_dump(mode="json"), package_versions(),
        history=history, model_spec=payload["spec"], algorithm=config.training.algorithm, greedy=config.export.greedy,
        seed=config.seed,
    )
    with atomic_directory(out / "export") as tmp:
        torch.jit.save(scripted, str(tmp / "policy.pt"), _extra_files={METADATA_FILE: json.dumps(metadata)})
        write_json_atomic(tmp / METADATA_FILE, metadata)
    return {"policy": str(out / "export" / "policy.pt"), "metadata": str(out / "export" / METADATA_FILE),
            "num_features": len(artifact.feature_ids), "num_actions": len(payload["action_names"])}


def _history_block(config: PipelineConfig, feature_ids: list[int]) -> dict[str, Any] | None:
    """The timeline's history block (its `_features.json`), whose features the policy takes as inputs."""
    path = config.paths.features_description
    block = json.loads(path.read_text()).get("history") if path.is_file() else None
    if block:
        missing = sorted(set(block["ids"]) - set(feature_ids))
        if missing:
            raise ValueError(f"{path}: history feature ids {missing[:5]} are not in normalization.json; run "
                             "workflow.identify_normalization and workflow.train again")
    return block or None
