"""A tiny exported policy shaped like the simulator's (context + per-candidate features) and a real server process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reagent_recsys.config import validate_config
from reagent_recsys.data.synthetic import write_synthetic_run
from reagent_recsys.normalization import NormalizationArtifact
from reagent_recsys.serving.process import Client, ServerProcess

__all__ = ["Client", "ServerProcess", "build_export", "decision"]

# 2 context features + 4 candidate slots with one feature each; 4 actions "0".."3" (the slots)
NAMES = {1: "user.satisfaction", 2: "time.progress", 3: "doc[0].clickbait", 4: "doc[1].clickbait",
         5: "doc[2].clickbait", 6: "doc[3].clickbait"}
CONTEXT = {"user.satisfaction": 0.5, "time.progress": -0.5}


def build_export(out: Path, seed: int = 0, epochs: int = 1) -> Path:
    """Train and export a tiny DQN on synthetic rows (seconds); returns the run's output_dir."""
    from reagent_recsys.export import export_policy as export
    from reagent_recsys.training.run import train

    write_synthetic_run(out, 1500, num_features=6, num_actions=4, seed=seed, row_group_size=250)
    artifact = NormalizationArtifact.load(out / "normalization.json")
    artifact.names = dict(NAMES)
    artifact.save(out / "normalization.json")
    config = validate_config({"output_dir": str(out), "seed": seed, "training": {
        "epochs": epochs, "batch_size": 128, "hidden_sizes": [16], "shuffle_buffer": 500, "torch_threads": 1,
        "cpe_every_epoch": False}})
    train(config)
    export(config)
    return out


def decision(session: str, step: int, clickbait: list[float] | None = None, **context: float) -> dict[str, Any]:
    clickbait = [0.9, 0.1, 0.8, 0.2] if clickbait is None else clickbait
    return {"session_id": session, "step": step, "context": {**CONTEXT, **context},
            "candidates": [{"id": f"doc-{j}", "features": {"clickbait": c}} for j, c in enumerate(clickbait)]}


