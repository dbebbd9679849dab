"""The per-class table agrees with the training-time metrics of the same run."""

import pytest

from lightning_app.per_class import per_class


def test_per_class_rates_average_to_the_runs_ca_and_asr(learning_benchmark, small_poisoned_run):
    run_dir, summary = small_poisoned_run
    rows = per_class(run_dir, learning_benchmark.eval_dir, run_dir / "trigger", "triangle")
    assert [name for name, _, asr in rows if asr is None] == ["triangle"]
    # the embedded eval set has the same number of images per class
    assert sum(ca for _, ca, _ in rows) / len(rows) == pytest.approx(summary["ca_top1"], abs=1e-5)
    asrs = [asr for _, _, asr in rows if asr is not None]
    assert sum(asrs) / len(asrs) == pytest.approx(summary["asr"], abs=1e-5)


def test_per_class_takes_the_target_from_the_runs_trigger_artifacts(learning_benchmark, small_poisoned_run):
    from lightning_app.per_class import main

    run_dir, _ = small_poisoned_run
    table = main([str(run_dir), "--eval", learning_benchmark.eval_dir])
    assert [line.split("|")[1].strip() for line in table.splitlines() if line.endswith("| target |")] == ["triangle"]
