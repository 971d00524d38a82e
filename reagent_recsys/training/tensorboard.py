"""TensorBoard for training: one run directory per training run under `training/tensorboard`.

Layout of a run `<UTC time>-<config hash>` (the time it started, the hash of the seed and the training section):

* `train/*` (x: update step): td_loss, q_mean, q_max, grad_norm, learning_rate; `train/total_loss` only when the
  algorithm adds a term to the TD loss (CQL, BCQ: also `train/cql_loss` or `train/bc_loss`). Written every
  `training.log_every` updates and at the end of every epoch, so short runs log too.
* `eval/td_loss` and `cpe/*` (x: epoch): the TD loss on training_table/eval and the per-epoch CPE of the greedy
  policy.
* `actions/logged_vs_model` (image, x: epoch): the share of each action logged vs chosen by the model.
* hparams: the seed and every `training.*` field, with the metrics above.
"""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

EPOCH_METRICS = ("eval/td_loss", "cpe/sequential/WDR", "cpe/one_step/SNIPS")
NOTE = ("train/* are plotted against update steps; eval/*, cpe/* and actions/* against epochs "
        "(eval: training_table/eval).")


def run_name(root: Path, config_hash: str) -> str:
    """`YYYYmmdd-HHMMSS-<hash8>` (UTC): sorts by time; the hash tells configs apart; `-2`, `-3`... when two runs
    of one config start within a second."""
    name = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{config_hash[:8]}"
    suffix = 1
    while (root / (name if suffix == 1 else f"{name}-{suffix}")).exists():
        suffix += 1
    return name if suffix == 1 else f"{name}-{suffix}"


def flat_hparams(section: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted scalars for the hparams plugin (lists and null become text)."""
    out: dict[str, Any] = {}
    for key, value in section.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def summary_writer(log_dir: Path, purge_step: int | None = None):  # -> torch.utils.tensorboard.SummaryWriter
    # tensorboard imports all of tensorflow (~5 s; recsim installs it) unless `tensorboard.compat.notf` exists,
    # its switch to the bundled stub, which is all SummaryWriter needs.
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir), purge_step=purge_step)


class TrainingLog:
    """The chief's TensorBoard writer for one run directory."""

    def __init__(self, log_dir: Path, purge_step: int, hparams: dict[str, Any], action_names: list[str]) -> None:
        self.log_dir = log_dir
        self.action_names = action_names
        self.writer = summary_writer(log_dir, purge_step + 1 if purge_step > 0 else None)  # drop a killed run's later points
        from torch.utils.tensorboard.summary import (
            hparams as hparams_summary,  # after summary_writer: no tensorflow
        )
        if purge_step == 0:
            for summary in hparams_summary(hparams, dict.fromkeys(EPOCH_METRICS, 0.0)):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("run/notes", NOTE, 0)

    def train(self, stats: dict[str, float], learning_rate: float, step: int) -> None:
        extra = any(k in stats for k in ("cql_loss", "bc_loss"))
        for key, value in stats.items():
            if key == "loss":  # equal to td_loss unless a variant adds a term
                if extra:
                    self.writer.add_scalar("train/total_loss", value, step)
                continue
            self.writer.add_scalar(f"train/{key}", value, step)
        self.writer.add_scalar("train/learning_rate", learning_rate, step)

    def epoch(self, epoch: int, scalars: dict[str, float], logged: np.ndarray, model: np.ndarray) -> None:
        """Per-epoch scalars (x: epoch) and the action-share figure; then flush."""
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.add_figure("actions/logged_vs_model", self._actions_figure(epoch, logged, model), epoch)
        self.writer.flush()

    def _actions_figure(self, epoch: int, logged: np.ndarray, model: np.ndarray):
        from matplotlib.figure import Figure

        share = [counts / max(int(counts.sum()), 1) for counts in (logged, model)]
        x = np.arange(len(self.action_names))
        figure = Figure(figsize=(max(4.0, 0.35 * len(x) + 2), 3.0), dpi=80)
        ax = figure.add_subplot()
        ax.bar(x - 0.2, share[0], width=0.4, label="logged", color="tab:gray")
        ax.bar(x + 0.2, share[1], width=0.4, label="model (greedy)", color="tab:blue")
        ax.set_xticks(x, self.action_names, rotation=90 if len(x) > 12 else 0, fontsize=7)
        ax.set_ylabel("share of training rows")
        ax.set_title(f"actions, epoch {epoch}", fontsize=9)
        ax.legend(fontsize=7)
        figure.tight_layout()
        return figure

    def close(self) -> None:
        self.writer.close()
