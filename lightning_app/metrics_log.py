"""`RUN/metrics.csv` that survives a resume.

Lightning's CSV writer deletes a run directory's `metrics.csv` when it opens it, so a run resumed with
`--ckpt_path last` would keep only the epochs after its checkpoint. `ResumableCSVLogger` reads the
old rows when it is built, and `KeepMetricsOnResume` puts back those logged up to the step the fit
resumed from (the later ones are logged again by the resumed fit); a fresh fit drops them.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

from lightning.pytorch import Callback
from lightning.pytorch.loggers import CSVLogger


class ResumableCSVLogger(CSVLogger):
    """A CSVLogger writing `<root_dir>/metrics.csv`, flushed at every log call (a killed run loses
    at most the rows since its last checkpoint, which the resumed fit logs again)."""

    def __init__(self, root_dir: str | Path) -> None:
        super().__init__(str(root_dir), name="", version="", flush_logs_every_n_steps=1)
        path = Path(self.log_dir) / "metrics.csv"
        self._previous_rows: list[dict[str, str]] = []
        if path.is_file():
            with path.open(newline="") as file:
                self._previous_rows = list(csv.DictReader(file))

    @property
    def experiment(self):
        with warnings.catch_warnings():  # "previous log files will be deleted": not the ones restored
            warnings.filterwarnings("ignore", message="Experiment logs directory")
            return super().experiment

    def restore_rows(self, until_step: int | None) -> int:
        """Write back the previous file's rows whose `step` is at most `until_step` (none if None),
        before anything this fit logs. Returns how many."""
        kept = [] if until_step is None else [row for row in self._previous_rows if _step(row) <= until_step]
        self._previous_rows = []
        if kept:
            writer = self.experiment
            writer.metrics[:0] = kept
            writer.save()
        return len(kept)


def _step(row: dict[str, str]) -> float:
    value = row.get("step") or ""
    try:
        return float(value)
    except ValueError:
        return float("inf")  # a row without a step cannot be placed before the resume point


class KeepMetricsOnResume(Callback):
    """Restores each `ResumableCSVLogger`'s earlier rows once the fit knows where it starts (after
    the checkpoint is loaded, before the first training batch logs)."""

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        resumed_at = trainer.global_step if trainer.ckpt_path else None
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.restore_rows(resumed_at)
