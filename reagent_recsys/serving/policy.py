"""The served policy: export/policy.pt loaded with its embedded metadata, its input layout and a version.

The version is the first 12 hex digits of the SHA-256 of policy.pt, so the same file always has the same version
and a re-export with different weights never reuses one. The metadata is read from inside policy.pt (the copy
``workflow.export`` embeds), so weights and layout always come from the same file, even mid-swap.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reagent_recsys.export import METADATA_FILE

# A per-candidate feature is named `<group>[<slot>].<feature>` (e.g. doc[3].clickbait, see envs/lts.py); slot s is
# the action named str(s).
CANDIDATE_NAME = re.compile(r"^(?P<group>[A-Za-z_][\w]*)\[(?P<slot>\d+)\]\.(?P<feature>.+)$")


@dataclass(frozen=True)
class Layout:
    """Where each named input goes in the policy's (F,) state and (A,) action vectors."""

    feature_ids: np.ndarray  # (F,) int64
    feature_names: list[str]
    action_names: list[str]
    context_columns: dict[str, int]  # context feature name -> state column
    candidate_columns: dict[str, np.ndarray]  # per-candidate feature -> (K,) state column of slot 0..K-1
    slot_actions: np.ndarray  # (K,) action index of candidate slot 0..K-1 (empty without candidate features)
    name_columns: dict[str, int] = field(default_factory=dict)  # every feature name -> state column
    history: dict[str, Any] | None = None  # the export's history block (history.spec_to_dict), if any

    @property
    def num_features(self) -> int:
        return len(self.feature_names)

    @property
    def num_actions(self) -> int:
        return len(self.action_names)

    @property
    def num_slots(self) -> int:
        return len(self.slot_actions) if self.candidate_columns else len(self.action_names)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> Layout:
        names = [str(n) for n in metadata["feature_names"]]
        actions = [str(a) for a in metadata["action_names"]]
        action_index = {a: i for i, a in enumerate(actions)}
        by_feature: dict[str, dict[int, int]] = {}
        for column, name in enumerate(names):
            match = CANDIDATE_NAME.match(name)
            if match and match["slot"] in action_index:
                by_feature.setdefault(match["feature"], {})[int(match["slot"])] = column
        # Candidate features are used only when every one covers the same slots 0..K-1; else all is context.
        slot_sets = {tuple(sorted(cols)) for cols in by_feature.values()}
        candidate_columns: dict[str, np.ndarray] = {}
        slot_actions = np.zeros(0, dtype=np.int64)
        if len(slot_sets) == 1 and next(iter(slot_sets)) == tuple(range(len(next(iter(slot_sets))))):
            slots = next(iter(slot_sets))
            candidate_columns = {f: np.array([cols[s] for s in slots], dtype=np.int64) for f, cols in by_feature.items()}
            slot_actions = np.array([action_index[str(s)] for s in slots], dtype=np.int64)
        in_slots = {int(c) for cols in candidate_columns.values() for c in cols}
        context = {n: c for c, n in enumerate(names) if c not in in_slots}
        return cls(
            feature_ids=np.asarray(metadata["feature_ids"], dtype=np.int64),
            feature_names=names,
            action_names=actions,
            context_columns=context,
            candidate_columns=candidate_columns,
            slot_actions=slot_actions,
            name_columns={n: c for c, n in enumerate(names)},
            history=metadata.get("history"),
        )

    def features_description(self) -> dict[str, Any]:
        """The decision log's `_features.json`, in the format workflow.offline_gym writes."""
        in_slots = {int(c): s for cols in self.candidate_columns.values() for s, c in enumerate(cols)}
        history_ids = set((self.history or {}).get("ids", []))
        features = []
        for column, (fid, name) in enumerate(zip(self.feature_ids.tolist(), self.feature_names, strict=True)):
            slot = in_slots.get(column)
            kind = "history" if fid in history_ids else "context" if slot is None else "document"
            features.append({"id": fid, "name": name, "kind": kind, "slot": slot})
        history = {"history": self.history} if self.history else {}
        return {
            "features": features,
            "action": {"meaning": "the served action (candidate slot index when requests carry candidates)",
                       "values": list(self.action_names)},
            "reward": "the reward posted to /v1/feedback (0 when it never came, on_missing_feedback: zero_reward)",
            "metrics": {"feedback_missing": "1 if the feedback timed out (reward 0), else 0; plus the metrics "
                                            "posted with the feedback"},
            **history,  # the features the server computed from each session's earlier steps (as served)
        }


@dataclass(frozen=True)
class FileStamp:
    """What identifies one file on disk cheaply (a swap of the export directory changes the inode)."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        st = os.stat(path)
        return cls(st.st_ino, st.st_size, st.st_mtime_ns)


class LoadedPolicy:
    """One version of the TorchScript policy and its layout; `forward` takes numpy, returns numpy."""

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        self.stamp = FileStamp.of(path)
        payload = path.read_bytes()
        self.version = hashlib.sha256(payload).hexdigest()[:12]
        extra = {METADATA_FILE: ""}
        self.module = torch.jit.load(io.BytesIO(payload), map_location="cpu", _extra_files=extra)
        self.module.eval()
        if not extra[METADATA_FILE]:
            raise ValueError(f"{path}: no embedded {METADATA_FILE}; export it again with workflow.export")
        self.metadata: dict[str, Any] = json.loads(extra[METADATA_FILE])
        self.layout = Layout.from_metadata(self.metadata)
        self.path = path
        self._ids: dict[bytes, list[int]] = {}
        self._actions: dict[bytes, list[str]] = {}
        # TorchScript profiles and optimizes its first calls: pay that here, before the policy serves a request
        for rows in (1, 8, 1, 8):
            self.forward(np.zeros((rows, self.layout.num_features), dtype=np.float32),
                         np.ones((rows, self.layout.num_features), dtype=np.float32),
                         np.ones((rows, self.layout.num_actions), dtype=bool))

    def shared_ids(self, present: np.ndarray) -> list[int]:
        """The feature ids where (F,) bool `present`: one list object per pattern, shared by the decisions."""
        key = present.tobytes()
        ids = self._ids.get(key)
        if ids is None:
            ids = self._ids[key] = self.layout.feature_ids[present].tolist()
        return ids

    def shared_actions(self, mask: np.ndarray) -> list[str]:
        """The action names where (A,) bool `mask`: one list object per pattern, shared by the decisions."""
        key = mask.tobytes()
        names = self._actions.get(key)
        if names is None:
            names = self._actions[key] = [self.layout.action_names[k] for k in np.flatnonzero(mask)]
        return names

    def forward(self, values: np.ndarray, presence: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, F) float32 values, (B, F) float32 presence, (B, A) bool mask -> Q (B, A) float64, greedy (B,) int64."""
        with torch.inference_mode():
            out = self.module(torch.from_numpy(values), torch.from_numpy(presence), torch.from_numpy(mask))
        return out["q_values"].numpy().astype(np.float64), out["action"].numpy()
