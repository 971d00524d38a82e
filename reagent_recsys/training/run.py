"""Training as a library: the training table + normalization.json -> <output_dir>/training/{model.pt, summary.json}.

Also writes a checkpoint per epoch (training/checkpoints) and TensorBoard events (training/tensorboard/<run>, one
directory per run; earlier runs stay). The run writes into a temporary directory swapped in at the end, so a run
that fails leaves the previous complete output (reagent_recsys.training.output). `training.resume` continues from
the newest checkpoint (of a killed run, or of the last complete output). With `training.num_processes: N` > 1,
`train` launches N data-parallel processes with torchrun (workflow.train_ddp, which calls `run_training`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from reagent_recsys.artifacts import package_versions, write_json_atomic
from reagent_recsys.config import PipelineConfig, RunPaths
from reagent_recsys.data.loaders import LoaderOptions, make_loader, read_table_metadata
from reagent_recsys.normalization import NormalizationArtifact, Preprocessor
from reagent_recsys.training.output import TrainingOutput
from reagent_recsys.training.tensorboard import flat_hparams
from reagent_recsys.training.trainer import ModelSpec, Trainer

ROOT = Path(__file__).resolve().parents[2]  # the project root: workflow.train_ddp runs from there


def training_inputs(config: PipelineConfig) -> tuple[Path, dict[str, Any], NormalizationArtifact]:
    """The train split's path, its manifest and the normalization artifact; checks they agree on features."""
    paths = RunPaths(config)
    table, norm_path = paths.training_table / "train", paths.normalization
    manifest = read_table_metadata(table)
    artifact = NormalizationArtifact.load(norm_path)
    if [int(f) for f in manifest["feature_ids"]] != list(artifact.feature_ids):
        raise ValueError(f"{table}: feature_ids {manifest['feature_ids'][:10]}... differ from {norm_path} "
                         f"{artifact.feature_ids[:10]}...; rerun workflow.training_table")
    return table, manifest, artifact


def _shared_work_dir(output: TrainingOutput | None, world_size: int) -> Path:
    """The chief's temporary directory, known to every replica (they read resumed checkpoints from it)."""
    if output is not None and world_size == 1:
        return output.work
    import torch.distributed as dist

    box = [str(output.work) if output is not None else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


def run_training(config: PipelineConfig, rank: int = 0, world_size: int = 1,
                 device: torch.device | None = None) -> dict[str, Any]:
    """Train one replica (rank) on its shard; with world_size > 1 the process group must be initialized."""
    started = time.perf_counter()
    cfg = config.training
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    table, manifest, artifact = training_inputs(config)
    preprocessor = Preprocessor(artifact)
    action_names = [str(a) for a in manifest["action_names"]]
    spec = ModelSpec.from_config(cfg, preprocessor.output_dim, len(action_names))
    final = RunPaths(config).training
    loader = make_loader(cfg.loader, table, LoaderOptions(
        batch_size=cfg.batch_size, shuffle=True, shuffle_buffer=cfg.shuffle_buffer, seed=config.seed,
        rank=rank, world_size=world_size, cache_rows=cfg.cache_rows))
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    output = TrainingOutput.begin(final, cfg.resume) if rank == 0 else None
    try:
        work = _shared_work_dir(output, world_size)
        hparams = flat_hparams({"seed": config.seed, "training": cfg.model_dump(mode="json")})
        trainer = Trainer(cfg, preprocessor, spec, action_names, work, config.seed, rank, world_size, device,
                          eval_table=table.parent / "eval", tensorboard_root=final / "tensorboard",
                          config_hash=config.section_hash("training"), hparams=hparams)
        result = trainer.fit(loader)
        if result["resumed_from"]:  # where the checkpoint lives once this run is swapped in
            result["resumed_from"] = str(final / "checkpoints" / Path(result["resumed_from"]).name)
        if world_size > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * world_size
            dist.all_gather_object(gathered, {"rows": result["rows_seen_rank"], "sha": result["weights_sha256"]})
            result["rows_seen_per_rank"] = [g["rows"] for g in gathered]
            result["replica_weights_sha256"] = [g["sha"] for g in gathered]
        summary = {
            **result,
            "model": str(final / "model.pt"),
            "algorithm": cfg.algorithm,
            "loader": cfg.loader,
            "world_size": world_size,
            "train_rows": loader.num_rows if world_size == 1 else None,
            "feature_ids": list(artifact.feature_ids),
            "action_names": action_names,
            "seconds": round(time.perf_counter() - started, 2),
            "config_hash": config.section_hash("training"),
            "versions": package_versions(),
        }
        if output is not None:
            trainer.save_model(work / "model.pt", {"feature_ids": list(artifact.feature_ids),
                                                   "action_names": action_names})
            write_json_atomic(work / "summary.json", summary)
            output.commit()
    except BaseException:
        if output is not None:
            output.abort()
        raise
    return summary


def launch_torchrun(config: PipelineConfig) -> dict[str, Any]:
    """Run `training.num_processes` replicas of workflow.train_ddp under torchrun (gloo on CPU) and wait.

    The resolved config goes to a temporary YAML file; the replicas' stderr (progress) passes through, their
    stdout is dropped; the result is the summary.json rank 0 wrote.
    """
    n = config.training.num_processes
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
           "OMP_NUM_THREADS": str(config.training.torch_threads or 1)}
    with tempfile.TemporaryDirectory(prefix="reagent_recsys-ddp-") as tmp:
        config_path = Path(tmp) / "config.yaml"
        data = config.model_dump(mode="json")
        data["output_dir"] = str(Path(config.output_dir).resolve())
        config_path.write_text(yaml.safe_dump(data, sort_keys=False))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
                   "-m", "workflow.train_ddp", str(config_path)]
        print(f"train: launching {n} processes: torchrun --standalone --nproc_per_node={n} -m workflow.train_ddp",
              file=sys.stderr, flush=True)
        done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"training.num_processes={n}: torchrun exited with code {done.returncode} (its "
                           "messages are above); training/ keeps the previous complete output")
    return json.loads((RunPaths(config).training / "summary.json").read_text())


def train(config: PipelineConfig) -> dict[str, Any]:
    """Train in this process, or with `training.num_processes` > 1 in that many torchrun processes."""
    if config.training.num_processes > 1 and "RANK" not in os.environ:
        return launch_torchrun(config)
    return run_training(config)
