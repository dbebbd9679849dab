"""`RUN/metrics.csv` that survives a resume.

Lightning's CSV writer deletes a run directory's `metrics.csv` when it opens it, so a run resumed with
`--ckpt_path last` would keep only the epochs after its checkpoint. `ResumableCSVLogger` moves the old
file aside (`metrics.previous.csv`) before the writer opens the directory, and `KeepMetricsOnResume`
writes back the rows logged up to the step the fit resumed from (the later ones the resumed fit logs
again); a fresh fit drops them. A fit that fails before that leaves the old file aside for the next.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only

PREVIOUS = "metrics.previous.csv"


class ResumableCSVLogger(CSVLogger):
    """A CSVLogger writing `<root_dir>/metrics.csv`, flushed at every log call (a killed run loses
    at most the rows since its last checkpoint, which the resumed fit logs again)."""

    def __init__(self, root_dir: str | Path) -> None:
        super().__init__(str(root_dir), name="", version="", flush_logs_every_n_steps=1)
        self._restored = False

    @property
    def experiment(self):
        directory = Path(self.log_dir)
        if self._experiment is None and rank_zero_only.rank == 0:
            current, previous = directory / "metrics.csv", directory / PREVIOUS
            if current.is_file() and not previous.exists():  # (if it exists, an earlier resume failed before restoring it)
                current.replace(previous)
        with warnings.catch_warnings():  # "previous log files will be deleted": the history is aside
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            return super().experiment

    def restore_rows(self, until_step: int | None) -> int:
        """Write back the previous file's rows whose `step` is at most `until_step` (none if None),
        before anything this fit logs, and remove the file set aside. Returns how many."""
        if self._restored:
            return 0
        self._restored = True
        writer = self.experiment
        previous = Path(self.log_dir) / PREVIOUS
        kept = []
        if previous.is_file() and until_step is not None:
            with previous.open(newline="") as file:
                kept = [row for row in csv.DictReader(file) if _step(row) <= until_step]
        if kept:
            writer.metrics[:0] = kept
            writer.save()
        previous.unlink(missing_ok=True)
        return len(kept)


def _step(row: dict[str, str]) -> float:
    value = row.get("step") or ""
    try:
        return float(value)
    except ValueError:
        return float("inf")  # a row without a step cannot be placed before the resume point


class KeepMetricsOnResume(Callback):
    """Restores each `ResumableCSVLogger`'s earlier rows once the fit knows where it starts: after the
    checkpoint is loaded, before the first training batch logs; or at the fit's end, for a resume with
    nothing left to train (Lightning then skips the training start)."""

    def on_train_start(self, trainer, pl_module) -> None:
        self._restore(trainer)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._restore(trainer)

    @staticmethod
    def _restore(trainer) -> None:
        if not trainer.is_global_zero:
            return
        resumed_at = trainer.global_step if trainer.ckpt_path else None
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.restore_rows(resumed_at)
