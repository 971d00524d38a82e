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
import shutil
import sys
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from reagent_recsys.config import TrainingConfig
from reagent_recsys.data.loaders import TableLoader
from reagent_recsys.evaluation.epoch_cpe import EpochCPE, EvalSplit
from reagent_recsys.training.dqn import DQN, build_algorithm
from reagent_recsys.training.networks import DQNModel, bcq_filter

CHECKPOINT_RE = re.compile(r"^epoch_(\d{4,})\.pt$")


@dataclass
class ModelSpec:
    """What rebuilds a DQNModel (saved beside its weights)."""

    input_dim: int
    num_actions: int
    hidden_sizes: list[int]
    dueling: bool
    behavior_cloning: bool

    @classmethod
    def from_config(cls, config: TrainingConfig, input_dim: int, num_actions: int) -> ModelSpec:
        return cls(input_dim, num_actions, list(config.hidden_sizes), config.dueling, config.algorithm == "bcq")

    def build(self) -> DQNModel:
        return DQNModel(self.input_dim, self.num_actions, self.hidden_sizes, self.dueling, self.behavior_cloning)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ------------------------------------------------------------------------------------------- checkpoints
def save_atomic(payload: dict[str, Any], path: Path) -> None:
    """torch.save to a temporary sibling, then rename: a killed process leaves the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    torch.save(payload, tmp)
    os.replace(tmp, path)


def latest_checkpoint(directory: Path) -> Path | None:
    found = sorted((int(m.group(1)), p) for p in directory.glob("epoch_*.pt") if (m := CHECKPOINT_RE.match(p.name)))
    return found[-1][1] if found else None


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def summary_writer(log_dir: Path, purge_step: int):  # -> torch.utils.tensorboard.SummaryWriter
    # tensorboard imports all of tensorflow (~5 s; recsim installs it) unless `tensorboard.compat.notf` exists,
    # its switch to the bundled stub, which is all SummaryWriter needs.
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(log_dir), purge_step=purge_step)


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
    out_dir: Path  # <output_dir>/training
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    eval_table: Path | None = None  # split for the per-epoch CPE; None: <out_dir>/../training_table/eval

    def __post_init__(self) -> None:
        torch.manual_seed(self.seed)
        net = self.spec.build().to(self.device)
        model: nn.Module = net
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            model = DistributedDataParallel(net, device_ids=[self.device] if self.device.type == "cuda" else None)
        self.preprocessor = self.preprocessor.to(self.device).eval().requires_grad_(False)
        self.algo: DQN = build_algorithm(model, self.preprocessor, self.config)
        self.checkpoints = self.out_dir / "checkpoints"
        self.epoch = 0  # completed epochs
        self.step = 0  # completed updates
        self.rows_seen = 0
        self._cpe: EpochCPE | None = None

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "step": self.step, "rows_seen": self.rows_seen, "spec": self.spec.to_dict(),
                "model": self.algo.net.state_dict(), "target": self.algo.target.state_dict(),
                "optimizer": self.algo.optimizer.state_dict(), "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any], source: Path) -> None:
        if state["spec"] != self.spec.to_dict():
            raise ValueError(f"training.resume: checkpoint {source} was trained with {state['spec']}, "
                             f"this config builds {self.spec.to_dict()}; remove the checkpoints or match the config")
        self.algo.net.load_state_dict(state["model"])
        self.algo.target.load_state_dict(state["target"])
        self.algo.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        self.epoch, self.step, self.rows_seen = int(state["epoch"]), int(state["step"]), int(state["rows_seen"])

    def resume_or_reset(self) -> Path | None:
        """With training.resume, load the newest checkpoint; otherwise start clean (old checkpoints removed)."""
        if self.config.resume:
            path = latest_checkpoint(self.checkpoints)
            if path is not None:
                self.load_state_dict(load_checkpoint(path), path)
            return path
        if self.is_chief:
            for stale in (self.checkpoints, self.out_dir / "tensorboard"):
                shutil.rmtree(stale, ignore_errors=True)
        self._barrier()
        return None

    def save_checkpoint(self) -> None:
        if not self.is_chief:
            return
        save_atomic(self.state_dict(), self.checkpoints / f"epoch_{self.epoch:04d}.pt")
        keep = self.config.keep_checkpoints
        if keep is not None:
            for old in sorted(self.checkpoints.glob("epoch_*.pt"))[:-keep]:
                old.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------ loop
    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def _all_have(self, has_batch: bool) -> bool:
        """DDP needs every replica to step together: stop the epoch as soon as one shard runs dry."""
        if self.world_size == 1:
            return has_batch
        flag = torch.tensor([int(has_batch)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())

    def _done(self) -> bool:
        return self.config.max_steps is not None and self.step >= self.config.max_steps

    def fit(self, loader: TableLoader) -> dict[str, Any]:
        """Train until `training.epochs` (or `training.max_steps`); return a summary."""
        resumed_from = self.resume_or_reset()
        cfg, names = self.config, self.action_names
        writer = summary_writer(self.out_dir / "tensorboard", self.step) if self.is_chief else None
        per_epoch = math.ceil(loader.num_rows / cfg.batch_size)
        total = min(cfg.epochs * per_epoch, cfg.max_steps or sys.maxsize)
        bar = tqdm(total=total, initial=self.step, desc="train", unit="upd", file=sys.stderr,
                   disable=not self.is_chief, mininterval=1.0)
        last: dict[str, float] = {}
        while self.epoch < cfg.epochs and not self._done():
            model_counts = np.zeros(self.spec.num_actions, dtype=np.int64)
            logged_counts = np.zeros(self.spec.num_actions, dtype=np.int64)
            batches = iter(loader.epoch(self.epoch))
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
                if writer is not None and self.step % cfg.log_every == 0:
                    last = {k: float(v) for k, v in stats.items() if v.dim() == 0}
                    for key, value in last.items():
                        writer.add_scalar(f"train/{key}", value, self.step)
                    writer.add_scalar("train/learning_rate", self.algo.optimizer.param_groups[0]["lr"], self.step)
            self.epoch += 1
            if writer is not None:
                model_share = model_counts / max(model_counts.sum(), 1)
                logged_share = logged_counts / max(logged_counts.sum(), 1)
                for a, name in enumerate(names):
                    writer.add_scalar(f"actions/model/{name}", model_share[a], self.step)
                    writer.add_scalar(f"actions/logged/{name}", logged_share[a], self.step)
                for key, value in self.epoch_cpe().items():
                    writer.add_scalar(key, value, self.step)
                writer.flush()
            self.save_checkpoint()
        bar.close()
        if writer is not None:
            writer.close()
        return {"epochs": self.epoch, "updates": self.step, "rows_seen_rank": self.rows_seen,
                "resumed_from": str(resumed_from) if resumed_from else None, "last_logged": last,
                "weights_sha256": weights_digest(self.algo.net)}

    @torch.no_grad()
    def epoch_cpe(self) -> dict[str, float]:
        """`cpe/...` scalars of the current greedy policy on `eval_table` (empty when off or there is no split)."""
        if not self.config.cpe_every_epoch or not self.is_chief:
            return {}
        if self._cpe is None:
            table = self.eval_table or self.out_dir.parent / "training_table" / "eval"
            if not table.exists():
                return {}
            self._cpe = EpochCPE(EvalSplit.read(table), self.config.gamma, seed=self.seed)
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
