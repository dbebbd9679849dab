"""A diverged fit stops before its optimizer steps on a non-finite loss and leaves no checkpoint or summary;
a preemption signal leaves a step checkpoint and a non-zero exit (the resume itself: tests/test_resume.py).

The unit tests: tests/unit/lightning_app/test_training_guard.py."""

from __future__ import annotations

import pytest
import torch

from lightning_app.checkpointing import DivergedError
from lightning_app.cli import BackdoorCLI


def test_a_diverged_fit_fails_naming_the_step_and_leaves_no_checkpoint_or_summary(small_benchmark, tmp_path):
    run_dir = tmp_path / "run"
    # the loss or, when a step's gradients overflow first, the weights are found non-finite: either stops it
    with pytest.raises(DivergedError, match="not finite at step"):
        BackdoorCLI(args=[
            "fit", "--config", "configs/embedded/badnet.yaml", "--trainer.default_root_dir", str(run_dir),
            "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false",
            "--data.init_args.embedded", "null", "--data.init_args.train_shards", small_benchmark.pretrain_urls,
            "--data.init_args.eval.directory", small_benchmark.eval_dir, "--data.init_args.batch_size", "32",
            "--model.init_args.optimizer.lr", "1e4", "--model.init_args.optimizer.warmup_steps", "5",
            "--checkpoint_every_n_steps", "1",
        ])
    for checkpoint in (run_dir / "checkpoints").glob("*.ckpt"):  # the steps before it diverged may be kept
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(tensor).all() for tensor in state.values()), checkpoint.name
    assert not (run_dir / "summary.json").exists()
