"""workflow.end_to_end: every stage in order from one YAML, skipping stages whose output is up to date.

A stage is up to date when its output exists, was made by this workflow from the same config sections as now
(its own and every upstream stage's), and has not been rewritten since (a fingerprint of the output's files).
Once a stage runs, every stage after it runs too. The ledger is `<output_dir>/_stages.json`.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reagent_recsys.artifacts import write_json_atomic
from reagent_recsys.config import PipelineConfig
from workflow.registry import get_workflow

LEDGER_FILE = "_stages.json"


@dataclass(frozen=True)
class Stage:
    workflow: str
    output: str  # path under output_dir
    sections: tuple[str, ...]  # config sections that shape this stage's output


STAGES: tuple[Stage, ...] = (
    Stage("workflow.offline_gym", "mdp", ("env", "logging")),
    Stage("workflow.timeline_operator", "timeline", ("timeline",)),
    Stage("workflow.identify_normalization", "normalization.json", ("normalization",)),
    Stage("workflow.training_table", "training_table", ("training_table",)),
    Stage("workflow.train", "training", ("training",)),
    Stage("workflow.export", "export", ("export",)),
    Stage("workflow.evaluate", "evaluation", ("evaluation",)),
)


def fingerprint(path: Path) -> str | None:
    """A cheap identity of an output: names, sizes and modification times of its files (None if missing)."""
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.relative_to(path.parent)}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


IMPORT_STAGE = Stage("workflow.import_logs", "mdp", ("import_",))


def stages_of(config: PipelineConfig) -> tuple[Stage, ...]:
    """The stages of a run: a logs run (an `import` section) imports its mdp table instead of simulating it."""
    return (IMPORT_STAGE, *STAGES[1:]) if config.import_ is not None else STAGES


def stage_keys(config: PipelineConfig) -> list[str]:
    """Stage i's key hashes the sections of stages 0..i, so an upstream change invalidates everything below."""
    keys, sections = [], []
    for stage in stages_of(config):
        sections.extend(stage.sections)
        keys.append(config.section_hash(*sections))
    return keys


def end_to_end(config: PipelineConfig) -> dict[str, Any]:
    out = Path(config.output_dir)
    ledger_path = out / LEDGER_FILE
    ledger: dict[str, Any] = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
    summary: dict[str, Any] = {}
    rerun_rest = False
    stages = stages_of(config)
    for index, (stage, key) in enumerate(zip(stages, stage_keys(config), strict=True), start=1):
        output = out / stage.output
        entry = ledger.get(stage.workflow, {})
        current = not rerun_rest and entry.get("key") == key and entry.get("fingerprint") == fingerprint(output)
        label = f"[{index}/{len(stages)}] {stage.workflow}"
        if current:
            print(f"{label}: up to date, skipped", file=sys.stderr, flush=True)
            summary[stage.workflow] = {"skipped": True, **entry.get("result", {})}
            continue
        print(f"{label}: running", file=sys.stderr, flush=True)
        started = time.perf_counter()
        result = get_workflow(stage.workflow).load()(config)
        seconds = round(time.perf_counter() - started, 2)
        print(f"{label}: done in {seconds:.1f}s", file=sys.stderr, flush=True)
        rerun_rest = True
        ledger[stage.workflow] = {"key": key, "fingerprint": fingerprint(output), "seconds": seconds,
                                  "result": _jsonable(result)}
        write_json_atomic(ledger_path, ledger)
        summary[stage.workflow] = {"skipped": False, "seconds": seconds, **_jsonable(result)}
    return summary


def _jsonable(result: Any) -> dict[str, Any]:
    if not isinstance(result, dict):
        return {}
    return json.loads(json.dumps(result, default=str))
