"""The training output, replaced as a whole: `<output_dir>/training/{model.pt, summary.json, checkpoints/}`.

A run writes its checkpoints, model.pt and summary.json into a temporary sibling `.training.tmp-<pid>-<id>` and
swaps it in only when it has finished (`commit`), so a run that fails or is killed leaves the previous complete
output untouched (or none), never a mix. TensorBoard runs are the exception: they are written live to
`training/tensorboard/<run>` (so training can be watched) and survive every retrain, so runs compare side by side.

The swap is four renames: (a) training/tensorboard -> tmp/tensorboard, (b) training -> .training.old-<pid>-<id>,
(c) tmp -> training, (d) delete the old one. `recover` (at the start of the next run) repairs a process killed
between any two of them: a stale old directory comes back when training/ is missing, else it is deleted; the
TensorBoard runs of a stale temporary go back to training/tensorboard.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

from reagent_recsys.artifacts import pid_alive

TENSORBOARD = "tensorboard"
CHECKPOINTS = "checkpoints"


def _stale(path: Path, prefix: str) -> bool:
    """True when `path` is `<prefix><pid>-...` and that process is gone."""
    pid = path.name.removeprefix(prefix).split("-")[0]
    return pid.isdigit() and not pid_alive(int(pid))


def _move_runs(source: Path, target: Path) -> None:
    """Move every TensorBoard run directory of `source` into `target` (kept where a name is taken already)."""
    if not source.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    for run in sorted(source.iterdir()):
        if not (target / run.name).exists():
            run.rename(target / run.name)


def _latest_epoch(checkpoints: Path) -> int:
    from reagent_recsys.training.trainer import CHECKPOINT_RE

    epochs = [int(m.group(1)) for p in checkpoints.glob("epoch_*.pt") if (m := CHECKPOINT_RE.match(p.name))]
    return max(epochs, default=0)


def recover(final: Path) -> Path | None:
    """Repair what killed runs left beside `final` (see the module docstring).

    Returns the checkpoints directory of the killed run that got furthest (moved out of its temporary), for
    `training.resume`; the caller deletes it when it does not resume. Temporaries of live processes are left alone.
    """
    parent, name = final.parent, final.name
    for old in sorted(parent.glob(f".{name}.old-*")):
        if not _stale(old, f".{name}.old-"):
            continue
        if not final.exists():
            old.rename(final)
        else:
            _move_runs(old / TENSORBOARD, final / TENSORBOARD)
            shutil.rmtree(old, ignore_errors=True)
    best: tuple[int, Path] | None = None
    for tmp in sorted(parent.glob(f".{name}.tmp-*")):
        if not _stale(tmp, f".{name}.tmp-"):
            continue
        _move_runs(tmp / TENSORBOARD, final / TENSORBOARD)
        epoch = _latest_epoch(tmp / CHECKPOINTS)
        if epoch and (best is None or epoch > best[0]):
            if best is not None:
                shutil.rmtree(best[1], ignore_errors=True)
            kept = parent / f".{name}.resume-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            (tmp / CHECKPOINTS).rename(kept)
            best = (epoch, kept)
        shutil.rmtree(tmp, ignore_errors=True)
    for leftover in parent.glob(f".{name}.resume-*"):  # from a recover() whose process was then killed
        if _stale(leftover, f".{name}.resume-"):
            shutil.rmtree(leftover, ignore_errors=True)
    return best[1] if best else None


@dataclass
class TrainingOutput:
    """A run's temporary training directory (`work`) and where it goes (`final`)."""

    final: Path
    work: Path

    @property
    def checkpoints(self) -> Path:
        return self.work / CHECKPOINTS

    @property
    def tensorboard(self) -> Path:
        """The stable TensorBoard logdir (`training/tensorboard`), one subdirectory per run."""
        return self.final / TENSORBOARD

    @classmethod
    def begin(cls, final: str | Path, resume: bool) -> TrainingOutput:
        """Recover from killed runs and create a fresh temporary directory.

        With `resume`, its checkpoints are those of the killed run that got furthest, if it got further than
        the last complete output, else (hard links or copies of) the complete output's own.
        """
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        killed = recover(final)
        work = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        work.mkdir()
        out = cls(final, work)
        if resume:
            complete = final / CHECKPOINTS
            if killed is not None and _latest_epoch(killed) > _latest_epoch(complete):
                killed.rename(out.checkpoints)
            elif complete.is_dir():
                out.checkpoints.mkdir()
                for path in sorted(complete.glob("epoch_*.pt")):
                    try:
                        os.link(path, out.checkpoints / path.name)
                    except OSError:
                        shutil.copy2(path, out.checkpoints / path.name)
        if killed is not None and killed.exists():
            shutil.rmtree(killed, ignore_errors=True)
        for partial in out.checkpoints.glob(".epoch_*.tmp-*"):  # a checkpoint write the kill interrupted
            partial.unlink(missing_ok=True)
        return out

    def commit(self) -> None:
        """Swap the finished temporary directory in (TensorBoard runs move along with it)."""
        final = self.final
        if (final / TENSORBOARD).is_dir():
            (final / TENSORBOARD).rename(self.work / TENSORBOARD)
        old = None
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            final.rename(old)
        self.work.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        """Delete the temporary directory (the previous complete output stays)."""
        shutil.rmtree(self.work, ignore_errors=True)

