"""workflow.end_to_end: every stage in order from one YAML, skipping stages whose output is up to date.

A stage is up to date when, compared with its last run recorded in the ledger `<output_dir>/_stages.json`:
its config sections (its own and every upstream stage's, less operational fields such as `training.resume`) are
the same, its output has not been touched (names, sizes and modification times of its files), and its inputs
hold the same content: the products of the stages before it (e.g. `training/model.pt` for export) and the
external inputs the config names (e.g. `timeline.input_path`). So a rerun whose output is byte-identical (a
resume that ends with the same weights) does not rerun what follows it. Every skip or rerun says why. The whole
run holds the output_dir's lock (`reagent_recsys.run_lock`): a second run on the same output_dir stops at once.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reagent_recsys.artifacts import text_sha256, write_json_atomic
from reagent_recsys.config import PipelineConfig, RunPaths, write_resolved_config
from reagent_recsys.run_lock import output_dir_lock
from workflow.registry import get_workflow

LEDGER_FILE = "_stages.json"
# Fields that change how a stage runs but not what it produces.
OPERATIONAL_FIELDS = {"training": ("resume", "torch_threads")}
CONTENT_DIGEST_LIMIT = 64 << 20  # files up to this size are identified by content, larger ones by size + mtime


@dataclass(frozen=True)
class Stage:
    workflow: str
    output: str  # path under output_dir
    sections: tuple[str, ...]  # config sections that shape this stage's output
    product: tuple[str, ...] = ()  # what later stages read, under output_dir (default: the output)
    applies: Callable[[PipelineConfig], bool] = lambda config: True
    external_inputs: Callable[[PipelineConfig], list[str]] = lambda config: []

    @property
    def products(self) -> tuple[str, ...]:
        return self.product or (self.output,)


def _timeline_inputs(config: PipelineConfig) -> list[str]:
    return [config.timeline.input_path] if config.timeline.input_path else []


def _logging_inputs(config: PipelineConfig) -> list[str]:
    """The exported policies the logging policy serves (a retrained expert must regenerate the logs)."""
    found: list[str] = []

    def walk(policy: Any) -> None:
        if getattr(policy, "type", None) == "exported":
            found.append(policy.path)
        for component in getattr(policy, "components", None) or []:
            walk(component.policy)

    if config.logging is not None:
        walk(config.logging.policy)
    return found


def _import_inputs(config: PipelineConfig) -> list[str]:
    logs = config.import_
    return [logs.path, *([logs.items.path] if logs.items is not None else [])] if logs is not None else []


STAGES: tuple[Stage, ...] = (
    Stage("workflow.offline_gym", RunPaths.MDP, ("env", "logging"),
          applies=lambda config: config.env is not None and config.import_ is None,
          external_inputs=_logging_inputs),
    Stage("workflow.import_logs", RunPaths.MDP, ("import",), applies=lambda config: config.import_ is not None,
          external_inputs=_import_inputs),
    Stage("workflow.timeline_operator", RunPaths.TIMELINE, ("timeline",), external_inputs=_timeline_inputs),
    Stage("workflow.identify_normalization", RunPaths.NORMALIZATION, ("normalization",)),
    Stage("workflow.training_table", RunPaths.TRAINING_TABLE, ("training_table",)),
    Stage("workflow.train", RunPaths.TRAINING, ("training",), product=(f"{RunPaths.TRAINING}/model.pt",)),
    Stage("workflow.export", RunPaths.EXPORT, ("export",)),
    Stage("workflow.evaluate", RunPaths.EVALUATION, ("evaluation",)),
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


def content_digest(path: Path) -> str | None:
    """The identity of what a stage hands on: the content of its data files, whatever their names (Spark names
    part files at random) or times; bookkeeping files (`_*`, `.*`) are left out. None if missing."""
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*")
        if p.is_file() and not any(part.startswith(("_", ".")) for part in p.relative_to(path).parts))
    hashes = []
    for f in files:
        stat = f.stat()
        if stat.st_size > CONTENT_DIGEST_LIMIT:
            hashes.append(f"{f.relative_to(path.parent)}:{stat.st_size}:{stat.st_mtime_ns}")
        else:
            hashes.append(hashlib.sha256(f.read_bytes()).hexdigest())
    return text_sha256("\n".join(sorted(hashes)))


def external_fingerprint(uri: str) -> str | None:
    """A local input's file listing (names, sizes, modification times); remote URIs are not fingerprinted."""
    if "://" in uri and not uri.startswith("file://"):
        return "remote"
    return fingerprint(Path(uri.removeprefix("file://")))


def _changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ, with old -> new."""
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for name in sorted(set(old) | set(new)):
            found += _changed_fields(old.get(name), new.get(name), f"{prefix}{name}.")
        return found
    return [] if old == new else [f"{prefix.rstrip('.')} {json.dumps(old)} -> {json.dumps(new)}"]


def why_stale(entry: dict[str, Any], key: str, sections: dict[str, Any], output_print: str | None,
              inputs: dict[str, str | None]) -> str | None:
    """Why a stage must run again (None: up to date)."""
    if not entry:
        return "first run"
    if output_print is None:
        return "its output is missing"
    if entry.get("key") != key:
        changed = _changed_fields(entry.get("sections", {}), sections)
        return "config changed: " + ("; ".join(changed[:3]) if changed else "sections differ")
    if entry.get("fingerprint") != output_print:
        return "its output was modified since it was written"
    changed = [name for name, digest in inputs.items() if entry.get("inputs", {}).get(name) != digest]
    if changed:
        return "input changed: " + ", ".join(changed)
    return None


def end_to_end(config: PipelineConfig) -> dict[str, Any]:
    """Run every stage that applies to `config` in order; returns the stages' statuses and results."""
    out = Path(config.output_dir)
    started = time.perf_counter()
    with output_dir_lock(out):
        stages = run_stages(config, out)
        write_resolved_config(config)
    return {"output_dir": str(out), "seconds": round(time.perf_counter() - started, 2), "stages": stages}


def run_stages(config: PipelineConfig, out: Path) -> list[dict[str, Any]]:
    ledger_path = out / LEDGER_FILE
    ledger: dict[str, Any] = json.loads(ledger_path.read_text()) if ledger_path.exists() else {}
    plan = [stage for stage in STAGES if stage.applies(config)]
    products: dict[str, str | None] = {}  # product path -> content digest, as each stage finishes
    section_names: list[str] = []
    report = []
    for index, stage in enumerate(plan, start=1):
        section_names.extend(stage.sections)
        sections = config.section_data(*section_names, exclude=OPERATIONAL_FIELDS)
        key = config.section_hash(*section_names, exclude=OPERATIONAL_FIELDS)
        inputs = {**products, **{uri: external_fingerprint(uri) for uri in stage.external_inputs(config)}}
        output = out / stage.output
        entry = ledger.get(stage.workflow, {})
        reason = why_stale(entry, key, sections, fingerprint(output), inputs)
        label = f"[{index}/{len(plan)}] {stage.workflow}"
        if reason is None:
            print(f"{label}: up to date, skipped", file=sys.stderr, flush=True)
            products.update(entry.get("products", {}))
            report.append({"workflow": stage.workflow, "status": "skipped", "reason": "up to date",
                           "result": entry.get("result", {})})
            continue
        print(f"{label}: running ({reason})", file=sys.stderr, flush=True)
        clock = time.perf_counter()
        result = _jsonable(get_workflow(stage.workflow).load()(config))
        seconds = round(time.perf_counter() - clock, 2)
        print(f"{label}: done in {seconds:.1f}s", file=sys.stderr, flush=True)
        made = {path: content_digest(out / path) for path in stage.products}
        products.update(made)
        ledger[stage.workflow] = {"key": key, "sections": sections, "fingerprint": fingerprint(output),
                                  "inputs": inputs, "products": made, "seconds": seconds, "result": result}
        write_json_atomic(ledger_path, ledger)
        report.append({"workflow": stage.workflow, "status": "ran", "reason": reason, "seconds": seconds,
                       "result": result})
    return report


def _jsonable(result: Any) -> dict[str, Any]:
    if not isinstance(result, dict):
        return {}
    return json.loads(json.dumps(result, default=str))
