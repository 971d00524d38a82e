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

import json  # noqa: E402
import time  # noqa: E402

import click  # noqa: E402

from reagent_recsys.config import ConfigError, describe_schema, load_config  # noqa: E402
from workflow.registry import WORKFLOWS, get_workflow  # noqa: E402


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """reagent_recsys: a batch RL pipeline for recommender systems, one YAML file per run."""


@cli.command()
@click.argument("workflow_name", metavar="WORKFLOW")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config field, e.g. --set training.epochs=2 (value parsed as YAML).")
@click.option("--debug", is_flag=True, help="Show the full traceback on errors.")
def run(workflow_name: str, config_path: str, overrides: tuple[str, ...], debug: bool) -> None:
    """Run WORKFLOW (see `list`) on the run described by CONFIG."""
    try:
        workflow = get_workflow(workflow_name)
        config = load_config(config_path, overrides)
        started = time.perf_counter()
        result = workflow.load()(config)
    except Exception as exc:  # one clear line for users; the traceback on request
        if debug:
            raise
        kind = "config error" if isinstance(exc, ConfigError) else "error"
        click.echo(f"{kind}: {exc}", err=True)
        if not isinstance(exc, ConfigError):
            click.echo("(run again with --debug for the full traceback)", err=True)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    click.echo(f"{workflow_name} finished in {time.perf_counter() - started:.1f}s")
    if result is not None:
        click.echo(json.dumps(result, indent=2, sort_keys=True, default=str))


@cli.command("list")
def list_workflows() -> None:
    """List the workflows that `run` accepts."""
    for name in sorted(WORKFLOWS):
        click.echo(f"{name:32s} {WORKFLOWS[name].summary}")


@cli.command("print-schema")
def print_schema() -> None:
    """Print every config field with its type, default and description."""
    click.echo("\n".join(describe_schema()))


@cli.command()
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config field.")
def validate(config_path: str, overrides: tuple[str, ...]) -> None:
    """Check CONFIG and print it with every default filled in."""
    try:
        config = load_config(config_path, overrides)
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(2)
    click.echo(json.dumps(config.model_dump(mode="json"), indent=2))


def main() -> None:
    cli(prog_name="reagent-recsys")


if __name__ == "__main__":
    main()
