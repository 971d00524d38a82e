#!/usr/bin/env python3
"""reagent_recsys command line: `cli.py run <workflow> <config.yaml> [--set dotted.key=value ...]`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    # Run as ./workflow/cli.py: use the project's virtualenv when it exists, and import from the checkout.
    venv = ROOT / ".venv"
    if (venv / "bin" / "python").exists() and Path(sys.prefix).resolve() != venv.resolve():
        os.execv(str(venv / "bin" / "python"), [str(venv / "bin" / "python"), *sys.argv])
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

import contextlib  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import click  # noqa: E402
import yaml  # noqa: E402

from reagent_recsys import __version__  # noqa: E402
from reagent_recsys.config import (  # noqa: E402
    ConfigError,
    describe_schema,
    load_config,
    resolved_config,
    write_resolved_config,
)
from reagent_recsys.run_lock import output_dir_lock  # noqa: E402
from reagent_recsys.summary import format_run_summary  # noqa: E402
from workflow.registry import WORKFLOWS, get_workflow  # noqa: E402

UNLOCKED = {"workflow.serve"}  # long-lived readers of an output_dir; every other run holds its lock
WRITES_ITS_CONFIG = {"workflow.end_to_end"}  # writes OUTPUT_DIR/config.yaml itself (for Python-API callers too)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="reagent-recsys")
def cli() -> None:
    """reagent_recsys: a batch RL pipeline for recommender systems, one YAML file per run."""


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout (Python, the JVM, subprocesses) to stderr for the duration."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def fail(exc: Exception, debug: bool) -> None:
    """One clear line for users (exit 2 for config errors, 1 otherwise); the traceback with --debug."""
    if debug:
        raise exc
    config_error = isinstance(exc, ConfigError)
    click.echo(f"{'config error' if config_error else 'error'}: {exc}", err=True)
    if not config_error:
        click.echo("(run again with --debug for the full traceback)", err=True)
    sys.exit(2 if config_error else 1)


@cli.command()
@click.argument("workflow_name", metavar="WORKFLOW")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. --set training.epochs=2 (value parsed as YAML).")
@click.option("--json", "as_json", is_flag=True, help="Write only the result as JSON to stdout (logs to stderr).")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
def run(workflow_name: str, config_path: str, overrides: tuple[str, ...], as_json: bool, debug: bool) -> None:
    """Run WORKFLOW (see `list`; `train` = `workflow.train`) on the run described by CONFIG."""
    started = time.perf_counter()
    try:
        workflow = get_workflow(workflow_name)
        config = load_config(config_path, overrides)
        lock = contextlib.nullcontext() if workflow.name in UNLOCKED else output_dir_lock(config.output_dir)
        with stdout_to_stderr() if as_json else contextlib.nullcontext(), lock:
            result = workflow.load()(config)
            if workflow.name not in WRITES_ITS_CONFIG:
                write_resolved_config(config)  # the config of the last successful run beside its outputs
    except Exception as exc:  # noqa: BLE001 - one clear line for users; the traceback on request
        fail(exc, debug)
    seconds = time.perf_counter() - started
    if as_json:
        click.echo(json.dumps({"workflow": workflow.name, "seconds": round(seconds, 2), "result": result},
                              default=str))
    else:
        click.echo(format_run_summary(workflow.name, result, seconds, str(config.output_dir)))


@cli.command("list")
def list_workflows() -> None:
    """List the workflows `run` accepts, in pipeline order."""
    for workflow in WORKFLOWS.values():
        click.echo(f"{workflow.short_name:24s} {workflow.summary}")


@cli.command("print-schema")
def print_schema() -> None:
    """Print every config field with its type, default and description."""
    click.echo("\n".join(describe_schema()))


@cli.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field.")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
def validate(config_path: str, overrides: tuple[str, ...], debug: bool) -> None:
    """Check CONFIG and print the values a run would use (defaults and env preset filled in), as YAML."""
    try:
        config = load_config(config_path, overrides)
        resolved = resolved_config(config)
    except Exception as exc:  # noqa: BLE001
        fail(exc, debug)
    click.echo(yaml.safe_dump(resolved, sort_keys=False).rstrip())


def main() -> None:
    cli(prog_name="reagent-recsys")


if __name__ == "__main__":
    main()
