"""A history spec over the serving tests' layout (tests/serving/helpers.py), the metadata of a policy that uses
it, a hand-made export with it (random weights, seconds), and the definition's reference on served steps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reagent_recsys.artifacts import atomic_directory, package_versions
from reagent_recsys.export import METADATA_FILE, ExportedPolicy, metadata_dict, script_policy
from reagent_recsys.history import HistorySpec, numpy_history, spec_to_dict
from reagent_recsys.normalization import (
    CONTINUOUS,
    NormalizationArtifact,
    NormalizationParameters,
    Preprocessor,
)
from reagent_recsys.training.networks import DQNModel
from tests.serving.helpers import NAMES

SPEC = HistorySpec(sums=("candidate.clickbait", "reward", "metric.click", "state.user.satisfaction"),
                   decays=(0.5, 0.9, 1.0), counts=("metric.click", "step"), since=("metric.click", "action.2"))
HISTORY_IDS = list(range(1000, 1000 + len(SPEC.features)))
ACTIONS = ["0", "1", "2", "3"]


def history_metadata(spec: HistorySpec = SPEC) -> dict[str, Any]:
    ids = list(NAMES) + HISTORY_IDS[:len(spec.features)]
    names = {**NAMES, **dict(zip(HISTORY_IDS, spec.names, strict=False))}
    return {"feature_ids": ids, "feature_names": [names[i] for i in ids], "action_names": ACTIONS,
            "history": spec_to_dict(spec, HISTORY_IDS[:len(spec.features)])}


def history_export(out: Path, seed: int = 0) -> Path:
    """export/policy.pt over the 6 features + SPEC's history features: a DQN with random weights whose greedy
    action depends on the history features (so what the server fills matters)."""
    metadata = history_metadata()
    ids = metadata["feature_ids"]
    names = dict(zip(ids, metadata["feature_names"], strict=True))
    artifact = NormalizationArtifact(ids, {f: NormalizationParameters(CONTINUOUS) for f in ids}, names=names)
    torch.manual_seed(seed)
    model = DQNModel(artifact.output_dim, len(ACTIONS), [16])
    full = metadata_dict(ids, names, ACTIONS, artifact.to_json(), {}, {}, package_versions(),
                         history=metadata["history"])
    with atomic_directory(out / "export") as tmp:
        torch.jit.save(script_policy(ExportedPolicy(Preprocessor(artifact), model)), str(tmp / "policy.pt"),
                       _extra_files={METADATA_FILE: json.dumps(full)})
        (tmp / METADATA_FILE).write_text(json.dumps(full))
    return out


def reference_features(steps: list[dict[str, Any]], spec: HistorySpec = SPEC) -> np.ndarray:
    """(T, H) history features of one session's served steps by numpy_history, from what the client knows:
    each step's request, the served action, and the reward and metrics it posted (x computed row by row)."""
    x = np.zeros((len(steps), len(spec.sources)))
    for t, s in enumerate(steps):
        request, action = s["request"], s["action"]
        values = {"candidate.clickbait": float(np.float32(request["candidates"][int(action)]["features"]["clickbait"])),
                  "reward": s["reward"], "metric.click": s["metrics"].get("click", 0.0),
                  "state.user.satisfaction": float(np.float32(request["context"]["user.satisfaction"])),
                  "step": 1.0, "action.2": float(action == "2")}
        x[t] = [values[source] for source in spec.sources]
    return numpy_history(np.zeros(len(steps), dtype=np.int64), np.array([s["request"]["step"] for s in steps]), x,
                         spec)
