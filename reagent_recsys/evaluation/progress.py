"""Progress lines on stderr for the long steps of evaluation (model fits, simulation): no long silences.

A step prints when it starts, a heartbeat with the elapsed time every `heartbeat` seconds while it runs (from a
daemon thread, so a step that cannot report from inside, like one model fit, still shows it is alive), and its
duration when it ends.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO


class Progress:
    """`line(text)` and `with step(text): ...` print ``<prefix>: ...`` lines to `stream` (stderr)."""

    def __init__(self, prefix: str = "evaluate", stream: TextIO | None = None, heartbeat: float = 8.0,
                 enabled: bool = True) -> None:
        self.prefix, self.stream, self.heartbeat, self.enabled = prefix, stream, heartbeat, enabled
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        if self.enabled:
            with self._lock:
                print(f"{self.prefix}: {text}", file=self.stream or sys.stderr, flush=True)

    @contextlib.contextmanager
    def step(self, text: str) -> Iterator[None]:
        """Announce `text`, beat while it runs, then say how long it took."""
        started = time.perf_counter()
        self.line(f"{text} ...")
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat):
                self.line(f"{text}: still running ({time.perf_counter() - started:.0f} s)")

        thread = threading.Thread(target=beat, name="evaluate-progress", daemon=True)
        if self.enabled:
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if self.enabled:
                thread.join()
        self.line(f"{text}: done in {time.perf_counter() - started:.1f} s")


QUIET = Progress(enabled=False)
