"""A tiny synthetic run (training table + normalization.json) and configs for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reagent_recsys.config import PipelineConfig, validate_config
from reagent_recsys.data.synthetic import write_synthetic_run

TINY = {"num_features": 6, "num_actions": 5, "row_group_size": 250}


def make_run(output_dir: Path, train_rows: int = 2000, seed: int = 0) -> Path:
    write_synthetic_run(output_dir, train_rows, eval_rows=0, seed=seed, **TINY)
    return output_dir


def tiny_config(output_dir: Path, **training: Any) -> PipelineConfig:
    section = {"epochs": 2, "batch_size": 128, "hidden_sizes": [32, 16], "shuffle_buffer": 500,
               "torch_threads": 1, "log_every": 5, **training}
    return validate_config({"output_dir": str(output_dir), "seed": 3, "training": section})


def tensorboard_runs(output_dir: Path) -> list[Path]:
    """The run directories under training/tensorboard, oldest first (names start with the UTC time)."""
    root = Path(output_dir) / "training" / "tensorboard"
    return sorted(p for p in root.iterdir() if p.is_dir())


def load_events(run_dir: Path):
    """A reloaded EventAccumulator over one run directory (scalars, images, hparams)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    return events
