"""Atomic artifact writes and manifests: a killed run never leaves a half-written table."""

from __future__ import annotations

import contextlib
import hashlib
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


def text_sha256(text: str | None) -> str | None:
    """A short content hash recorded in manifests to tie an artifact to its inputs (None when absent)."""
    return None if text is None else hashlib.sha256(text.encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    versions = {"python": sys.version.split()[0]}
    for name in _TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


def pid_alive(pid: int) -> bool:
    """Whether process `pid` still runs (on this host): temporaries named by a dead pid are stale."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temporaries(final: Path) -> None:
    """Clean up after writers of `final` that were killed (their process is gone): `.name.tmp-<pid>-*` are
    deleted; `.name.old-<pid>-*` (the previous output, renamed away just before the swap) comes back when
    `final` is missing, else it is deleted."""
    for kind in ("old", "tmp"):
        for path in sorted(final.parent.glob(f".{final.name}.{kind}-*")):
            pid = path.name.removeprefix(f".{final.name}.{kind}-").split("-")[0]
            if not pid.isdigit() or pid_alive(int(pid)):
                continue
            if kind == "old" and not final.exists():
                path.rename(final)
            else:
                _remove(path)


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
        trash = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        final.rename(trash)
        tmp.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(final)


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON through a temporary sibling (removed on failure; those of killed writers are swept first)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_manifest(table_dir: str | Path) -> dict[str, Any]:
    path = Path(table_dir) / MANIFEST_FILE
    if not path.exists():
        raise FileNotFoundError(f"{table_dir}: no {MANIFEST_FILE}; was the stage that writes it run?")
    return json.loads(path.read_text())
