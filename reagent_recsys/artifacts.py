"""Atomic artifact writes and manifests: a killed run never leaves a half-written table."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from reagent_recsys.schema import MANIFEST_FILE

_TRACKED_PACKAGES = ("reagent-recsys", "numpy", "pyarrow", "pandas", "pyspark", "torch", "pydantic", "petastorm")


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in _TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(final: Path) -> None:
    """Delete `.name.tmp-<pid>-*` siblings left by writers that were killed (their process is gone)."""
    for tmp in final.parent.glob(f".{final.name}.tmp-*"):
        pid = tmp.name.removeprefix(f".{final.name}.tmp-").split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `final` in one rename, on error it is removed.

    Temporaries of earlier writers that were killed (SIGKILL skips every cleanup) are removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        final.rename(trash)
        tmp.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(final)


def write_json_atomic(path: str | Path, payload: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def read_manifest(table_dir: str | Path) -> dict[str, Any]:
    path = Path(table_dir) / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{table_dir}: no {MANIFEST_FILE}; was the stage that writes it run?")
    return json.loads(path.read_text())
