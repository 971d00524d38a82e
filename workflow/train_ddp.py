"""Data-parallel training: `torchrun --standalone --nproc_per_node=2 -m workflow.train_ddp CONFIG [--set k=v]`.

Each process reads a disjoint shard of the training table (row groups i % world_size == rank); gradients are
averaged by DistributedDataParallel (gloo on CPU, nccl on GPU). Rank 0 writes TensorBoard, checkpoints, model.pt
and summary.json (with every replica's weight digest and row count).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist

from reagent_recsys.config import ConfigError, load_config
from reagent_recsys.training.run import run_training


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="workflow.train_ddp", description=__doc__)
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    if "RANK" not in os.environ:
        print("workflow.train_ddp: start it with torchrun (RANK/WORLD_SIZE are not set)", file=sys.stderr)
        return 2
    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
    dist.init_process_group("nccl" if use_cuda else "gloo")
    try:
        device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
        summary = run_training(config, dist.get_rank(), dist.get_world_size(), device)
        if dist.get_rank() == 0:
            print(json.dumps(summary, indent=2, sort_keys=True, default=str))
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
