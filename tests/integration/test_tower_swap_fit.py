"""Putting one tower back: the right parameters move, and the evaluation agrees with the run's metrics.

The unit tests: tests/unit/lightning_app/test_tower_swap.py."""

import pytest

from lightning_app.tower_swap import tower_swap


def test_tower_swap_of_a_run_with_itself_gives_the_runs_ca_and_asr(learning_benchmark, small_poisoned_run):
    run_dir, summary = small_poisoned_run
    rows = tower_swap(run_dir, run_dir, learning_benchmark.eval_dir, run_dir / "trigger", "triangle")
    assert [label for label, _, _ in rows][:2] == ["incoming", "defended"]
    for _, ca, asr in rows:
        assert ca == pytest.approx(summary["ca_top1"], abs=1e-5) and asr == pytest.approx(summary["asr"], abs=1e-5)
