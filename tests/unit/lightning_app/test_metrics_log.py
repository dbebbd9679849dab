"""A resumed fit keeps `metrics.csv`'s rows up to its checkpoint (Lightning's writer deletes the file)."""

from __future__ import annotations

import csv

import pytest

from lightning_app.metrics_log import ResumableCSVLogger


def _write_rows(path, steps):
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["epoch", "step", "train/loss", "val/asr"])
        writer.writeheader()
        for step in steps:
            writer.writerow({"epoch": step // 10, "step": step, "train/loss": 1.0 / (step + 1),
                             "val/asr": 0.5 if step % 10 == 9 else ""})


def _rows(path):
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("until_step, kept", [(24, 25), (None, 0), (1000, 40)])
def test_rows_up_to_the_resume_step_are_kept_before_the_new_ones(tmp_path, until_step, kept):
    _write_rows(tmp_path / "metrics.csv", range(40))
    logger = ResumableCSVLogger(tmp_path)
    assert logger.restore_rows(until_step) == kept
    logger.log_metrics({"train/loss": 0.01, "train/new_key": 3.0}, step=25)
    logger.save()

    rows = _rows(tmp_path / "metrics.csv")
    assert [float(row["step"]) for row in rows] == [*range(kept), 25]
    if kept > 9:
        assert rows[9]["val/asr"] == "0.5"
    assert rows[-1]["train/new_key"] == "3.0"  # a key the old file did not have widens the header
    if kept:
        assert rows[0]["train/loss"] == "1.0" and rows[0]["train/new_key"] == ""


def test_a_directory_without_metrics_starts_empty(tmp_path):
    logger = ResumableCSVLogger(tmp_path)
    assert logger.restore_rows(10) == 0
    logger.log_metrics({"train/loss": 0.5}, step=0)
    assert [row["train/loss"] for row in _rows(tmp_path / "metrics.csv")] == ["0.5"]  # flushed at once


def test_rows_set_aside_by_a_fit_that_failed_before_restoring_them_reach_the_next_fit(tmp_path):
    _write_rows(tmp_path / "metrics.csv", range(40))
    ResumableCSVLogger(tmp_path).experiment  # the writer opened the directory, then the fit failed
    assert not (tmp_path / "metrics.csv").exists() and (tmp_path / "metrics.previous.csv").exists()

    logger = ResumableCSVLogger(tmp_path)
    assert logger.restore_rows(30) == 31 and logger.restore_rows(30) == 0  # once per fit
    assert [float(row["step"]) for row in _rows(tmp_path / "metrics.csv")] == list(range(31))
    assert not (tmp_path / "metrics.previous.csv").exists()
