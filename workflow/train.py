"""workflow.train: the training table + normalization.json -> <output_dir>/training/{model.pt, summary.json}.

Also writes TensorBoard events (training/tensorboard) and a checkpoint per epoch (training/checkpoints);
`--set training.resume=true` continues from the newest checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from reagent_recsys.artifacts import package_versions, write_json_atomic
from reagent_recsys.config import PipelineConfig
from reagent_recsys.data.loaders import LoaderOptions, make_loader, read_table_metadata
from reagent_recsys.normalization import NormalizationArtifact, Preprocessor
from reagent_recsys.training.trainer import ModelSpec, Trainer


def training_inputs(config: PipelineConfig) -> tuple[Path, dict[str, Any], NormalizationArtifact]:
    """The train split's path, its manifest and the normalization artifact; checks they agree on features."""
    table = Path(config.output_dir) / "training_table" / "train"
    norm_path = Path(config.output_dir) / "normalization.json"
    manifest = read_table_metadata(table)
    artifact = NormalizationArtifact.load(norm_path)
    if [int(f) for f in manifest["feature_ids"]] != list(artifact.feature_ids):
        raise ValueError(f"{table}: feature_ids {manifest['feature_ids'][:10]}... differ from {norm_path} "
                         f"{artifact.feature_ids[:10]}...; rerun workflow.training_table")
    return table, manifest, artifact


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
    out_dir = Path(config.output_dir) / "training"
    loader = make_loader(cfg.loader, table, LoaderOptions(
        batch_size=cfg.batch_size, shuffle=True, shuffle_buffer=cfg.shuffle_buffer, seed=config.seed,
        rank=rank, world_size=world_size, cache_rows=cfg.cache_rows))
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trainer = Trainer(cfg, preprocessor, spec, action_names, out_dir, config.seed, rank, world_size, device)
    result = trainer.fit(loader)
    if world_size > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world_size
        dist.all_gather_object(gathered, {"rows": result["rows_seen_rank"], "sha": result["weights_sha256"]})
        result["rows_seen_per_rank"] = [g["rows"] for g in gathered]
        result["replica_weights_sha256"] = [g["sha"] for g in gathered]
    model_path = out_dir / "model.pt"
    summary = {
        **result,
        "model": str(model_path),
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
    if trainer.is_chief:
        trainer.save_model(model_path, {"feature_ids": list(artifact.feature_ids), "action_names": action_names})
        write_json_atomic(out_dir / "summary.json", summary)
    return summary


def train(config: PipelineConfig) -> dict[str, Any]:
    """Single-process training (see workflow.train_ddp for several processes)."""
    return run_training(config)
