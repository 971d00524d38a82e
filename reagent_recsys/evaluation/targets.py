"""Target policies to evaluate, as action probabilities on the rows of a training-table split.

Two kinds of candidate:

* a TorchScript file with the exported interface ``policy(state, presence, possible_actions_mask) -> {"action",
  "action_probabilities", ...}`` (what ``workflow.export`` writes); its ``metadata.json`` (beside it or embedded)
  gives its ``feature_ids`` (columns are matched BY ID, absent ones get presence 0), ``action_names`` and
  ``greedy`` mode; without metadata the table's own feature order and actions are assumed;
* a Parquet table of action probabilities keyed by ``(mdp_id, sequence_number)`` with one float column per
  action name. It must cover every eval row; covering every train row too lets FQE (and so DR, WDR, MAGIC) run.
  Rows break a rule -> one `EvaluationDataError` line naming the rule, the count and example keys.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from reagent_recsys.data.keys import mdp_keys
from reagent_recsys.evaluation.bootstrap import EvaluationDataError
from reagent_recsys.evaluation.inputs import Split

METADATA_FILE = "metadata.json"
KEYS = ("mdp_id", "sequence_number")
_TOLERANCE = 1e-4


# --------------------------------------------------------------------------------------- TorchScript
def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """A TorchScript policy and its metadata (``metadata.json`` beside the file, else embedded, else {})."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no TorchScript policy here")
    extra = {METADATA_FILE: ""}
    try:
        module = torch.jit.load(str(path), _extra_files=extra)
    except RuntimeError as exc:
        raise EvaluationDataError(f"{path}: not a TorchScript file ({str(exc).splitlines()[0]})") from None
    beside = path.parent / METADATA_FILE
    text = beside.read_text() if beside.is_file() else extra[METADATA_FILE]
    return module, (json.loads(text) if text else {})


def feature_index(policy_ids: Sequence[int], table_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """For each policy feature id: its column in the table (0 when absent) and whether the table has it."""
    where = {int(f): i for i, f in enumerate(table_ids)}
    index = np.array([where.get(int(f), 0) for f in policy_ids], dtype=np.int64)
    present = np.array([int(f) in where for f in policy_ids], dtype=bool)
    return index, present


@torch.no_grad()
def policy_probabilities(policy: Any, state: np.ndarray, presence: np.ndarray, mask: np.ndarray, greedy: bool,
                         batch_size: int = 65536) -> np.ndarray:
    """(N, A) target probabilities in the served mode: one-hot of the greedy action, or the softmax.

    Rows with no possible action (terminal next states) are evaluated with every action possible.
    """
    mask = np.where(mask.any(axis=1, keepdims=True), mask, True)  # (N, A)
    chunks = []
    for i in range(0, len(state), batch_size):
        out = policy(torch.from_numpy(state[i:i + batch_size]), torch.from_numpy(presence[i:i + batch_size]),
                     torch.from_numpy(mask[i:i + batch_size]))
        if greedy:
            chunks.append(np.eye(mask.shape[1])[out["action"].numpy()])
        else:
            chunks.append(out["action_probabilities"].double().numpy())
    return np.concatenate(chunks)


def torchscript_probabilities(policy: Any, metadata: dict[str, Any], split: Split, table_ids: Sequence[int],
                              action_names: Sequence[str], greedy: bool | None = None,
                              where: str = "policy") -> np.ndarray:
    """(N, A) probabilities of a TorchScript policy on the split's rows (features matched by id)."""
    names = [str(a) for a in metadata.get("action_names", action_names)]
    if names != [str(a) for a in action_names]:
        raise EvaluationDataError(f"{where}: action_names {names[:10]} differ from the training table's "
                                  f"{list(action_names)[:10]} (same names in the same order are needed)")
    policy_ids = [int(f) for f in metadata.get("feature_ids", table_ids)]
    index, present = feature_index(policy_ids, table_ids)
    state = np.where(present, split["state"][:, index], 0.0).astype(np.float32)
    presence = np.where(present, split["state_presence"][:, index], False)
    mode = bool(metadata.get("greedy", True)) if greedy is None else greedy
    return policy_probabilities(policy, state, presence, split["possible_actions_mask"], mode)


# ----------------------------------------------------------------------------------- probability tables
def _examples(ids: np.ndarray, seqs: np.ndarray, bad: np.ndarray, limit: int = 3) -> str:
    rows = np.flatnonzero(bad)[:limit]
    return ", ".join(f"({ids[r]!s}, {int(seqs[r])})" for r in rows)


def read_probability_table(path: str | Path, action_names: Sequence[str]) -> pd.DataFrame:
    """The table's (mdp_key, sequence_number, probabilities...) frame after the column and value rules."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no probability table here")
    table = pq.read_table(path)
    table = table.drop([c for c in table.column_names if c.startswith("__index_level_")])  # pandas' index
    names = [str(a) for a in action_names]
    missing = [c for c in (*KEYS, *names) if c not in table.column_names]
    unknown = [c for c in table.column_names if c not in (*KEYS, *names)]
    if unknown:
        raise EvaluationDataError(f"{path}: rule 'columns are mdp_id, sequence_number and action names' broken by "
                                  f"{len(unknown)} unknown columns, e.g. {unknown[:5]} (actions: {names[:10]})")
    if missing:
        raise EvaluationDataError(f"{path}: rule 'a column per action name and the keys' broken: {len(missing)} "
                                  f"columns missing, e.g. {missing[:5]}")
    frame = table.to_pandas()
    ids = frame["mdp_id"].astype(str).to_numpy()
    seqs = frame["sequence_number"].to_numpy()
    probs = frame[names].to_numpy(dtype=np.float64)  # (R, A)
    bad = ~np.isfinite(probs).all(axis=1) | (probs < 0).any(axis=1)
    if bad.any():
        raise EvaluationDataError(f"{path}: rule 'probabilities are finite and >= 0' broken by {int(bad.sum())} "
                                  f"rows, e.g. (mdp_id, sequence_number) {_examples(ids, seqs, bad)}")
    out = pd.DataFrame(probs, columns=names)
    out.insert(0, "sequence_number", seqs.astype(np.int64))
    out.insert(0, "mdp_key", mdp_keys(ids))
    out.insert(0, "mdp_id", ids)
    dup = out.duplicated(["mdp_key", "sequence_number"]).to_numpy()
    if dup.any():
        raise EvaluationDataError(f"{path}: rule 'one row per (mdp_id, sequence_number)' broken by {int(dup.sum())} "
                                  f"rows, e.g. {_examples(ids, seqs, dup)}")
    return out


def table_probabilities(frame: pd.DataFrame, split: Split, action_names: Sequence[str], where: str,
                        split_name: str, required: bool = True) -> np.ndarray | None:
    """(N, A) probabilities of the table `frame` on the split's rows, checked against its possible actions;
    None when the table covers none of the split's rows and `required` is false."""
    names = [str(a) for a in action_names]
    keys = pd.DataFrame({"mdp_key": split["mdp_key"], "sequence_number": split["sequence_number"],
                         "row": np.arange(len(split["mdp_key"]))})
    joined = keys.merge(frame, on=["mdp_key", "sequence_number"], how="left", sort=False).sort_values("row")
    missing = joined["mdp_id"].isna().to_numpy()
    if missing.all() and not required:
        return None
    if missing.any():
        examples = [f"(mdp_key {k}, {s})" for k, s in zip(split["mdp_key"][missing][:3],
                                                          split["sequence_number"][missing][:3], strict=True)]
        raise EvaluationDataError(f"{where}: rule 'a row for every {split_name} row' broken: {int(missing.sum())} of "
                                  f"{len(missing)} {split_name} rows missing, e.g. {', '.join(examples)}")
    probs = joined[names].to_numpy(dtype=np.float64)  # (N, A)
    ids, seqs = joined["mdp_id"].to_numpy(), joined["sequence_number"].to_numpy()
    possible = split["possible_actions_mask"].astype(bool)
    live = possible.any(axis=1)  # terminal padding rows may have no possible action
    impossible = live & (np.where(possible, 0.0, probs) > _TOLERANCE).any(axis=1)
    if impossible.any():
        raise EvaluationDataError(f"{where}: rule 'no probability on impossible actions' broken by "
                                  f"{int(impossible.sum())} {split_name} rows, e.g. {_examples(ids, seqs, impossible)}")
    sums = np.where(possible, probs, 0.0).sum(axis=1)
    off = live & (np.abs(sums - 1.0) > _TOLERANCE)
    if off.any():
        raise EvaluationDataError(f"{where}: rule 'probabilities sum to 1 over the possible actions' broken by "
                                  f"{int(off.sum())} {split_name} rows (sums e.g. {np.round(sums[off][:3], 4).tolist()}), "
                                  f"e.g. {_examples(ids, seqs, off)}")
    return probs


# ------------------------------------------------------------------------------------------ candidates
def check_policy_paths(policies: Sequence[Any], export_dir: Path) -> None:
    """Fail before any reading when a candidate's file is missing (the exported policy: run workflow.export)."""
    for entry in policies:
        path = Path(entry.path) if entry.path else export_dir / "policy.pt"
        if not path.exists():
            hint = "run workflow.export first" if entry.path is None else "check evaluation.policies"
            raise FileNotFoundError(f"{path}: evaluation.policies[{entry.name}] not found; {hint}")


def build_targets(policies: Sequence[Any], export_dir: Path, train: Split, evaluation: Split,
                  table_ids: Sequence[int], action_names: Sequence[str]
                  ) -> tuple[list[Any], dict[str, tuple[Any, dict[str, Any]]]]:
    """``evaluation.policies`` entries -> (pipeline `Target`s, {name: (TorchScript module, metadata)}).

    An entry without a path is the exported policy (``export_dir/policy.pt``).
    """
    from reagent_recsys.evaluation.pipeline import Target

    check_policy_paths(policies, export_dir)
    targets, scripted = [], {}
    for entry in policies:
        where = f"evaluation.policies[{entry.name}]"
        if entry.kind == "torchscript":
            path = Path(entry.path) if entry.path else export_dir / "policy.pt"
            module, metadata = load_torchscript(path)
            if entry.greedy is not None:
                metadata = {**metadata, "greedy": entry.greedy}
            probs = [torchscript_probabilities(module, metadata, split, table_ids, action_names, where=where)
                     for split in (evaluation, train)]
            scripted[entry.name] = (module, metadata)
            mode = "greedy" if metadata.get("greedy", True) else "softmax"
            targets.append(Target(entry.name, f"TorchScript {path} ({mode})", probs[0], probs[1]))
        else:
            frame = read_probability_table(entry.path, action_names)
            where = f"{where} {entry.path}"
            eval_probs = table_probabilities(frame, evaluation, action_names, where, "eval")
            train_probs = table_probabilities(frame, train, action_names, where, "train", required=False)
            targets.append(Target(entry.name, f"probability table {entry.path}", eval_probs, train_probs))
    return targets, scripted
