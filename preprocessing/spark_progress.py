"""Progress of a Spark stage on stderr, read from Spark's status tracker by a background thread.

Spark's own console bar is off (it redraws one line with carriage returns and says nothing about which of our
stages runs). Every `interval` seconds while a Spark job is active, one line per active Spark stage:

    workflow.timeline_operator: spark job 4 stage 7: 5/8 tasks done, 2 running (31s)

and, while no Spark job runs for a while (driver-side work such as Box-Cox fits), a heartbeat line.
"""

from __future__ import annotations

import sys
import threading
import time


class ProgressReporter:
    """A daemon thread polling `spark.sparkContext.statusTracker()`; `start()`/`stop()` around a stage."""

    def __init__(self, spark, name: str, interval: float = 5.0, stream=None) -> None:
        self.spark = spark
        self.name = name
        self.interval = interval
        self.stream = stream or sys.stderr
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"progress:{name}", daemon=True)
        self.lines = 0  # lines printed (tests read it)

    def start(self) -> None:
        self._started = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2 * self.interval + 5)

    def _print(self, text: str) -> None:
        elapsed = time.monotonic() - self._started
        print(f"{self.name}: {text} ({elapsed:.0f}s)", file=self.stream, flush=True)
        self.lines += 1

    def _snapshot(self) -> list[str]:
        tracker = self.spark.sparkContext.statusTracker()
        jobs = {}
        for job_id in tracker.getActiveJobsIds():
            info = tracker.getJobInfo(job_id)
            if info is not None:
                jobs.update({stage: job_id for stage in info.stageIds})
        lines = []
        for stage_id in sorted(tracker.getActiveStageIds()):
            info = tracker.getStageInfo(stage_id)
            if info is None:
                continue
            job = jobs.get(stage_id)
            where = f"spark job {job} stage {stage_id}" if job is not None else f"spark stage {stage_id}"
            failed = f", {info.numFailedTasks} failed" if info.numFailedTasks else ""
            lines.append(f"{where}: {info.numCompletedTasks}/{info.numTasks} tasks done, "
                         f"{info.numActiveTasks} running{failed}")
        return lines

    def _run(self) -> None:
        quiet_since = time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                lines = self._snapshot()
            except Exception:  # noqa: BLE001 - the session is stopping or the JVM died: the stage reports that
                return
            for line in lines:
                self._print(line)
            if lines:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= 2 * self.interval:
                self._print("working on the driver")
                quiet_since = time.monotonic()
