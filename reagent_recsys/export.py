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

from typing import Any

import torch
from torch import Tensor, nn

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
