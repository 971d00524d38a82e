"""The training loop: epochs over a loader, TensorBoard scalars, atomic per-epoch checkpoints, resume, DDP.

Checkpoints hold only tensors, ints, floats, strs, dicts and lists (they load with `weights_only=True`). A run
resumed from the checkpoint of epoch e replays epochs e+1.. exactly as an uninterrupted run would (the loader's
order depends only on (seed, epoch, rank)), so it ends with the same number of updates and the same weights.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as ds
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from reagent_recsys.config import TrainingConfig
from reagent_recsys.data.loaders import LoaderOptions, TableLoader, make_loader
from reagent_recsys.evaluation.epoch_cpe import EpochCPE, EvalSplit
from reagent_recsys.training.dqn import DQN, build_algorithm
from reagent_recsys.training.networks import DQNModel, bcq_filter
from reagent_recsys.training.tensorboard import TrainingLog, run_name

CHECKPOINT_RE = re.compile(r"^epoch_(\d{4,})\.pt$")


@dataclass
class ModelSpec:
    """What rebuilds a DQNModel (saved beside its weights)."""

    input_dim: int
    num_actions: int
    hidden_sizes: list[int]
    dueling: bool
    behavior_cloning: bool
    value_scale: float = 1.0  # models saved before training.value_scale existed have none

    @classmethod
    def from_config(cls, config: TrainingConfig, input_dim: int, num_actions: int) -> ModelSpec:
        return cls(input_dim, num_actions, list(config.hidden_sizes), config.dueling, config.algorithm == "bcq",
                   config.value_scale)

    def build(self) -> DQNModel:
        return DQNModel(self.input_dim, self.num_actions, self.hidden_sizes, self.dueling, self.behavior_cloning,
                        self.value_scale)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ------------------------------------------------------------------------------------------- checkpoints
def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary sibling, then rename: a killed process leaves the old file or the new one; a
    failed write (full disk) removes its temporary."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def latest_checkpoint(directory: Path) -> Path | None:
    found = sorted((int(m.group(1)), p) for p in directory.glob("epoch_*.pt") if (m := CHECKPOINT_RE.match(p.name)))
    return found[-1][1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def weights_digest(module: nn.Module) -> str:
    """sha256 of every parameter and buffer, in state_dict order (replicas compare equal iff bit-identical)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------ trainer
@dataclass
class Trainer:
    """Trains one replica; with world_size > 1 the process group must already be initialized."""

    config: TrainingConfig
    preprocessor: nn.Module
    spec: ModelSpec
    action_names: list[str]
    work_dir: Path  # the run's (temporary) training directory: checkpoints/ go here
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    eval_table: Path | None = None  # split for the per-epoch eval TD loss and CPE; None: none
    tensorboard_root: Path | None = None  # training/tensorboard; the run gets its own subdirectory
    config_hash: str = ""  # names the TensorBoard run
    hparams: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        torch.manual_seed(self.seed)
        net = self.spec.build().to(self.device)
        model: nn.Module = net
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(net, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.preprocessor = self.preprocessor.to(self.device).eval().requires_grad_(False)
        self.algo: DQN = build_algorithm(model, self.preprocessor, self.config)
        self.checkpoints = self.work_dir / "checkpoints"
        self.epoch = 0  # completed epochs
        self.step = 0  # completed updates
        self.rows_seen = 0
        self.tensorboard_run = ""  # set by `resume` (kept across resumes) or at the start of `fit`
        self._cpe: EpochCPE | None = None
        self._eval: TableLoader | None | bool = None  # False: no usable eval split

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "rows_seen": self.rows_seen, "spec": self.spec.to_dict(),
                "model": self.algo.net.state_dict(), "target": self.algo.target.state_dict(),
                "optimizer": self.algo.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                "tensorboard_run": self.tensorboard_run}

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
        if state["spec"] != self.spec.to_dict():
            raise ValueError(f"training.resume: checkpoint {source} was trained with {state['spec']}, "
                             f"this config builds {self.spec.to_dict()}; remove the checkpoints or match the config")
        self.algo.net.load_state_dict(state["model"])
        self.algo.target.load_state_dict(state["target"])
        self.algo.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.step, self.rows_seen = int(state["epoch"]), int(state["step"]), int(state["rows_seen"])
        self.tensorboard_run = str(state.get("tensorboard_run", ""))

    def resume(self) -> Path | None:
        """With training.resume, load the newest checkpoint of `work_dir` (the caller put the ones to resume from
        there); otherwise, or when there is none, start from scratch."""
        path = latest_checkpoint(self.checkpoints) if self.config.resume else None
        if path is not None:
            self.load_state_dict(load_checkpoint(path), path)
        return path

    def save_checkpoint(self) -> None:
        if not self.is_chief:
            return
        save_atomic(self.state_dict(), self.checkpoints / f"epoch_{self.epoch:04d}.pt")
        keep = self.config.keep_checkpoints
        if keep is not None:
            for old in sorted(self.checkpoints.glob("epoch_*.pt"))[:-keep]:
                old.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------ loop
    def _all_have(self, has_batch: bool) -> bool:
        """DDP needs every replica to step together: stop the epoch as soon as one shard runs dry."""
        if self.world_size == 1:
            return has_batch
        flag = torch.tensor([int(has_batch)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _done(self) -> bool:
        return self.config.max_steps is not None and self.step >= self.config.max_steps

    def _log(self) -> TrainingLog | None:
        if not self.is_chief or self.tensorboard_root is None:
            return None
        self.tensorboard_run = self.tensorboard_run or run_name(self.tensorboard_root, self.config_hash)
        return TrainingLog(self.tensorboard_root / self.tensorboard_run, self.step, self.hparams, self.action_names)

    def fit(self, loader: TableLoader) -> dict[str, Any]:
        """Train until `training.epochs` (or `training.max_steps`); return a summary."""
        resumed_from = self.resume()
        cfg, names = self.config, self.action_names
        log = self._log()
        per_epoch = math.ceil(loader.num_rows / cfg.batch_size)
        total = min(cfg.epochs * per_epoch, cfg.max_steps or sys.maxsize)
        bar = tqdm(total=total, initial=self.step, desc="train", unit="upd", file=sys.stderr,
                   disable=not self.is_chief, mininterval=1.0)
        last: dict[str, float] = {}
        while self.epoch < cfg.epochs and not self._done():
            model_counts = np.zeros(self.spec.num_actions, dtype=np.int64)
            logged_counts = np.zeros(self.spec.num_actions, dtype=np.int64)
            batches = iter(loader.epoch(self.epoch))
            pending: dict[str, float] | None = None  # the newest statistics not yet written
            while not self._done():
                batch = next(batches, None)
                if not self._all_have(batch is not None):
                    break
                batch = batch.to(self.device)
                stats = self.algo.update(batch)
                self.step += 1
                self.rows_seen += len(batch)
                bar.update(1)
                model_counts += np.bincount(stats["greedy_action"].cpu().numpy(), minlength=len(names))
                logged_counts += np.bincount(batch.action.cpu().numpy(), minlength=len(names))
                if log is not None:
                    pending = {k: float(v) for k, v in stats.items() if v.dim() == 0}
                    if self.step % cfg.log_every == 0:
                        log.train(pending, self.algo.optimizer.param_groups[0]["lr"], self.step)
                        last, pending = pending, None
            self.epoch += 1
            if log is not None:
                if pending is not None:  # the epoch's last update, so runs shorter than log_every log too
                    log.train(pending, self.algo.optimizer.param_groups[0]["lr"], self.step)
                    last = pending
                log.epoch(self.epoch, {**self.eval_td_loss(), **self.epoch_cpe()}, logged_counts, model_counts)
            self.save_checkpoint()
        bar.close()
        if log is not None:
            log.close()
        return {"epochs": self.epoch, "updates": self.step, "rows_seen_rank": self.rows_seen,
                "resumed_from": str(resumed_from) if resumed_from else None, "last_logged": last,
                "tensorboard_run": self.tensorboard_run or None, "weights_sha256": weights_digest(self.algo.net)}

    # ------------------------------------------------------------------------ per-epoch eval
    def _eval_loader(self) -> TableLoader | None:
        """The eval split's loader; None (said once on stderr) when there is no split or it is empty."""
        if self._eval is None:
            table = self.eval_table
            rows = ds.dataset(table, format="parquet").count_rows() if table is not None and table.exists() else 0
            if table is not None and table.exists() and rows == 0:
                print(f"train: {table} has 0 rows (timeline.eval_fraction too small for the episodes?); no eval "
                      "TD loss or per-epoch CPE", file=sys.stderr, flush=True)
            self._eval = make_loader("arrow", table, LoaderOptions(
                batch_size=8192, shuffle=False, shuffle_buffer=0, prefetch=0)) if rows else False
        return self._eval or None

    @torch.no_grad()
    def eval_td_loss(self) -> dict[str, float]:
        """`eval/td_loss`: the mean TD loss of the current network on the eval split (empty without one)."""
        loader = self._eval_loader() if self.is_chief else None
        if loader is None:
            return {}
        total, rows = 0.0, 0
        for batch in loader.epoch(0):
            batch = batch.to(self.device)
            x = self.algo.features(batch.state, batch.state_presence)  # (B, D)
            q_logged = self.algo.net(x)[0].gather(1, batch.action[:, None]).squeeze(1)  # (B,)
            loss = self.algo.td_loss(q_logged, self.algo.compute_target(batch), reduction="sum")
            total, rows = total + float(loss), rows + len(batch)
        return {"eval/td_loss": total / max(rows, 1)}

    @torch.no_grad()
    def epoch_cpe(self) -> dict[str, float]:
        """`cpe/...` scalars of the current greedy policy on the eval split (empty when off or there is none)."""
        if not self.config.cpe_every_epoch or not self.is_chief or self._eval_loader() is None:
            return {}
        if self._cpe is None:
            self._cpe = EpochCPE(EvalSplit.read(self.eval_table), self.config.gamma, seed=self.seed)
        split, chunk = self._cpe.split, 65536
        outputs = [self.algo.net(self.algo.features(torch.from_numpy(split.state[i:i + chunk]).to(self.device),
                                                    torch.from_numpy(split.state_presence[i:i + chunk]).to(self.device)))
                   for i in range(0, len(split), chunk)]
        q = torch.cat([o[0] for o in outputs]).cpu()  # (N, A)
        allowed = torch.from_numpy(split.possible_actions_mask)  # (N, A)
        if self.config.algorithm == "bcq":  # the served BCQ policy picks among the actions its imitator allows
            allowed = bcq_filter(torch.cat([o[1] for o in outputs]).cpu(), allowed, self.config.bcq_threshold)
        return self._cpe.scalars(q.double().numpy(), allowed.numpy())

    def save_model(self, path: Path, extra: dict[str, Any]) -> None:
        """Final weights + what rebuilds the network (loads with weights_only=True)."""
        if self.is_chief:
            save_atomic({"spec": self.spec.to_dict(), "model": self.algo.net.state_dict(), **extra}, path)


def load_model(path: str | Path) -> tuple[DQNModel, dict[str, Any]]:
    """The DQNModel saved by `Trainer.save_model` (eval mode) and the whole payload."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    net = ModelSpec(**payload["spec"]).build()
    net.load_state_dict(payload["model"])
    return net.eval(), payload
