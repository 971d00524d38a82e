"""One run per output_dir: an exclusive lock held for the whole run.

The lock is `flock` on ``<output_dir>/.lock``: the kernel releases it when its holder exits, even by SIGKILL, so
a lock left by a killed run is stale by construction and the next run takes it over (and says so). The file
names the holder (pid, host, start time) so a refused run can say who holds it. Re-entrant within a process
(`cli.py run workflow.end_to_end` and `end_to_end()` both take it).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".lock"
_held: dict[str, int] = {}  # lock path -> nesting depth in this process


class RunLockedError(RuntimeError):
    """Another live run holds the output_dir."""


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def output_dir_lock(output_dir: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of `output_dir` (created if needed) for the block; remote URIs are not locked."""
    if "://" in str(output_dir):
        yield
        return
    path = Path(output_dir) / LOCK_FILE
    key = str(path.resolve()) if path.parent.exists() else str(path.absolute())
    if _held.get(key):
        _held[key] += 1
        try:
            yield
        finally:
            _held[key] -= 1
        return
    created = not path.parent.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:  # a directory this process cannot write: the stage itself fails, naming its path
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            raise RunLockedError(f"{output_dir}: another run is using this output_dir ({holder}); wait for it to "
                                 "finish or choose another output_dir") from None
        stale = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if stale:
            print(f"[lock] {output_dir}: taking over the lock of a run that did not finish ({_holder(stale)})",
                  file=sys.stderr, flush=True)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime())}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _held[key] = 1
        try:
            yield
        finally:
            _held.pop(key, None)
            os.ftruncate(fd, 0)  # a clean exit leaves an empty file: content at acquisition means a killed run
            if created and [p.name for p in path.parent.iterdir()] == [LOCK_FILE]:
                path.unlink()  # a run that wrote nothing into a directory it created leaves nothing behind
                path.parent.rmdir()
    finally:
        os.close(fd)  # closing releases the flock
