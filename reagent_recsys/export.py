"""The served policy: one TorchScript module with the normalization baked in, plus its metadata.

    policy = torch.jit.load("export/policy.pt")
    out = policy(state)                                   # state (B, F) raw values in metadata's feature order
    out = policy(state, presence, possible_actions_mask)  # (B, F) 0/1 presence, (B, A) 0/1 or bool
    out["q_values"] (B, A) float32, out["action"] (B,) int64 (greedy among possible actions),
    out["action_probabilities"] (B, A): softmax(Q / export.temperature) over the possible actions.

Presence defaults to all-present and the mask to all-possible. A BCQ policy also drops the actions its
behavior-cloning head deems unlikely (ratio < bcq_threshold) before the argmax and the softmax.
Loading needs torch only; the metadata is also embedded in the file (`_extra_files={"metadata.json": ""}`).
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import Tensor, nn

from reagent_recsys.artifacts import atomic_directory, package_versions, write_json_atomic
from reagent_recsys.config import PipelineConfig
from reagent_recsys.normalization import NormalizationArtifact, Preprocessor
from reagent_recsys.training.networks import DQNModel, bcq_filter

METADATA_FILE = "metadata.json"


class ExportedPolicy(nn.Module):
    """Preprocessor + Q-network (+ BCQ filter): raw features -> Q-values, greedy action, softmax probabilities."""

    def __init__(self, preprocessor: nn.Module, model: DQNModel, temperature: float = 1.0,
                 bcq_threshold: float = 0.0) -> None:
        super().__init__()
        self.preprocessor = preprocessor
        self.q = model.q
        self.use_bcq = bool(model.behavior_cloning)
        self.imitator = model.imitator
        self.bcq_threshold = float(bcq_threshold)
        self.temperature = float(temperature)
        self.num_features = int(preprocessor.num_features)
        self.num_actions = int(model.q.advantage.out_features if model.q.dueling else model.q.trunk[-1].out_features)

    def forward(self, state: Tensor, presence: Tensor | None = None,
                possible_actions_mask: Tensor | None = None) -> dict[str, Tensor]:
        state = state.to(torch.float32)
        if state.dim() == 1:
            state = state.unsqueeze(0)  # (F,) -> (1, F)
        present = torch.ones_like(state) if presence is None else presence.to(torch.float32).reshape(state.shape)
        x = self.preprocessor(state, present)  # (B, D)
        q = self.q(x)  # (B, A)
        if possible_actions_mask is None:
            mask = torch.ones_like(q, dtype=torch.bool)
        else:
            mask = possible_actions_mask.reshape(q.shape) != 0
        if self.use_bcq:
            mask = bcq_filter(self.imitator(x), mask, self.bcq_threshold)
        masked = q.masked_fill(~mask, float("-inf"))  # (B, A)
        return {
            "q_values": q,
            "action": masked.argmax(dim=1),
            "action_probabilities": torch.softmax(masked / self.temperature, dim=1),
        }


def script_policy(policy: ExportedPolicy) -> torch.jit.ScriptModule:
    return torch.jit.script(policy.eval().requires_grad_(False))


def metadata_dict(feature_ids: list[int], feature_names: dict[int, str], action_names: list[str],
                  normalization: dict[str, Any], training: dict[str, Any], export: dict[str, Any],
                  versions: dict[str, str], history: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """What a server needs besides the weights: the input order, the action names and the provenance; with
    `history` (the timeline's `history.spec_to_dict` block) the history features among the inputs, which a
    server computes per session (`history.spec_from_dict`, `history.SessionHistory`) instead of a client."""
    return {
        "format": "reagent_recsys.policy/1",
        "inputs": {
            "state": "(B, F) float32 raw feature values, columns in feature_ids order (0 where absent)",
            "presence": "optional (B, F) 0/1; default all present",
            "possible_actions_mask": "optional (B, A) 0/1 or bool; default all possible",
        },
        "outputs": {
            "q_values": "(B, A) float32",
            "action": "(B,) int64 greedy possible action",
            "action_probabilities": "(B, A) softmax(Q / temperature) over possible actions",
        },
        "feature_ids": list(feature_ids),
        "feature_names": [feature_names.get(f, str(f)) for f in feature_ids],
        "action_names": list(action_names),
        "normalization": normalization,
        "training_config": training,
        "export_config": export,
        "versions": versions,
        **({"history": history} if history else {}),
        **extra,
    }


def export_policy(config: PipelineConfig) -> dict[str, Any]:
    """Script the trained policy with its normalization and write it with its metadata (atomically)."""
    from reagent_recsys.training.trainer import (
        load_model,  # here: a server importing this module needs no trainer
    )

    paths = config.paths
    model_path = paths.model
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path}: no trained model; run workflow.train first")
    model, payload = load_model(model_path)
    artifact = NormalizationArtifact.load(paths.normalization)
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
    with atomic_directory(paths.export) as tmp:
        torch.jit.save(scripted, str(tmp / "policy.pt"), _extra_files={METADATA_FILE: json.dumps(metadata)})
        write_json_atomic(tmp / METADATA_FILE, metadata)
    return {"policy": str(paths.policy), "metadata": str(paths.export / METADATA_FILE),
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
