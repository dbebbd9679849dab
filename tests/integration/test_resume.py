"""Exact resume: a run stopped mid-epoch (by an exception, or SIGKILL) and resumed with
`--ckpt_path last` ends with the same weights as a run that was never stopped, under each pretraining
objective with state of its own (MMCL+SSL's augmented views, SigLIP's logit bias)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.repo import REPO
from lightning.pytorch import Callback

from lightning_app.checkpointing import newest_checkpoint
from lightning_app.cli import BackdoorCLI

EPOCHS = 3
# 800 pairs, batch 32, 2 workers: 12 batches per worker, 24 per epoch. Resuming at step 35 (batch 11
# of epoch 1) makes the workers skip unequal shares and start the round-robin at the second worker.
STOP_AT = 35


def _args(bench, run_dir, *extra: str) -> list[str]:
    return [
        "fit", "--config", "configs/embedded/badnet.yaml",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.max_epochs", str(EPOCHS),
        "--trainer.enable_progress_bar", "false",
        "--data.init_args.embedded", "null",
        "--data.init_args.train_shards", bench.pretrain_urls,
        "--data.init_args.eval.directory", bench.eval_dir,
        "--data.init_args.batch_size", "32",
        "--data.init_args.num_workers", "2",
        "--model.init_args.optimizer.warmup_steps", "5",
        "--checkpoint_every_n_steps", "5",
        *extra,
    ]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _logged_steps(run_dir: Path, key: str) -> list[int]:
    with (run_dir / "metrics.csv").open(newline="") as file:
        return [int(row["step"]) for row in csv.DictReader(file) if row.get(key)]


class _Preempted(RuntimeError):
    pass


class _StopAt(Callback):
    """Fails the run at the start of step `step`, after the checkpoint of step `step` was written."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise _Preempted(f"stopped at step {self.step}")


@pytest.fixture(scope="module", params=["mmcl", "mmcl_ssl", "siglip"])
def objective(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def straight_run(small_benchmark, objective, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp(f"straight_{objective}") / "run"
    BackdoorCLI(args=_args(small_benchmark, run_dir, "--model.init_args.objective", objective))
    return run_dir


def test_resume_mid_epoch_gives_the_weights_of_an_uninterrupted_run(small_benchmark, objective, straight_run, tmp_path):
    run_dir = tmp_path / "run"
    chosen = ("--model.init_args.objective", objective)
    cli = BackdoorCLI(args=_args(small_benchmark, run_dir, *chosen)[1:], run=False)
    cli.trainer.callbacks.append(_StopAt(STOP_AT))
    with pytest.raises(_Preempted):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    saved = torch.load(newest_checkpoint(run_dir / "checkpoints"), map_location="cpu", weights_only=True)
    assert saved["global_step"] == STOP_AT
    assert 0 < STOP_AT % 24 and saved["epoch"] == STOP_AT // 24  # a mid-epoch checkpoint

    BackdoorCLI(args=_args(small_benchmark, run_dir, *chosen, "--ckpt_path", "last"))
    _assert_same_weights(_weights(straight_run), _weights(run_dir))
    assert not torch.equal(saved["state_dict"]["model.text_projection"], _weights(run_dir)["model.text_projection"])
    # the consumed samples are counted once: the resumed run's skipped batches are not counted again
    health = json.loads((straight_run / "summary.json").read_text())["data_health"]
    assert json.loads((run_dir / "summary.json").read_text())["data_health"] == health
    assert health["good"] >= EPOCHS * 24 * 32  # and the few read into partial batches that were dropped
    # metrics.csv holds the whole run once: the rows before the checkpoint kept, none logged twice
    for key in ("train/loss", "val/asr", "lr-AdamW/pg1"):
        straight = _logged_steps(straight_run, key)
        assert straight and _logged_steps(run_dir, key) == straight, key


@pytest.mark.parametrize("objective", ["mmcl"], indirect=True)
def test_resume_after_sigkill_gives_the_weights_of_an_uninterrupted_run(small_benchmark, straight_run, tmp_path):
    run_dir = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "main.py", *_args(small_benchmark, run_dir)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = run_dir / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("step*.ckpt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at = torch.load(newest_checkpoint(checkpoints), map_location="cpu", weights_only=True)["global_step"]
    assert killed_at < EPOCHS * 24, "the run finished before it could be killed"

    BackdoorCLI(args=_args(small_benchmark, run_dir, "--ckpt_path", "last"))
    _assert_same_weights(_weights(straight_run), _weights(run_dir))


class _StopInValidation(Callback):
    """Fails the run in the validation that follows training step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.global_step == self.step and not trainer.sanity_checking:
            raise _Preempted(f"stopped in the validation after step {self.step}")


@pytest.mark.parametrize("objective", ["mmcl"], indirect=True)
@pytest.mark.parametrize(("where", "stop", "every_n_steps"), [
    # killed right after epoch 0's checkpoint, before epoch 1's first batch: the newest checkpoint is the
    # epoch-end one, from which Lightning restores no loader state
    ("after_epoch_checkpoint", _StopAt(24), "5"),
    # killed in the validation after epoch 1's last batch, whose step checkpoint (step 48) is the newest:
    # a checkpoint at an epoch's last batch, before the epoch's validation and end
    ("in_validation", _StopInValidation(48), "8"),
])
def test_resume_at_an_epoch_boundary_gives_the_weights_and_counts_of_an_uninterrupted_run(
        small_benchmark, straight_run, tmp_path, where, stop, every_n_steps):
    run_dir = tmp_path / "run"
    args = _args(small_benchmark, run_dir, "--checkpoint_every_n_steps", every_n_steps)
    cli = BackdoorCLI(args=args[1:], run=False)
    cli.trainer.callbacks.append(stop)
    with pytest.raises(_Preempted):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    saved = torch.load(newest_checkpoint(run_dir / "checkpoints"), map_location="cpu", weights_only=True)
    assert saved["global_step"] == stop.step and saved["global_step"] % 24 == 0, where

    BackdoorCLI(args=[*args, "--ckpt_path", "last"])
    _assert_same_weights(_weights(straight_run), _weights(run_dir))
    health = json.loads((straight_run / "summary.json").read_text())["data_health"]
    assert json.loads((run_dir / "summary.json").read_text())["data_health"] == health


@pytest.mark.parametrize("objective", ["mmcl"], indirect=True)
def test_sigterm_saves_a_step_checkpoint_exits_nonzero_and_resumes_exactly(small_benchmark, straight_run, tmp_path):
    run_dir = tmp_path / "run"
    args = _args(small_benchmark, run_dir, "--checkpoint_every_n_steps", "1000")  # no step checkpoints of its own
    process = subprocess.Popen([sys.executable, "main.py", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    checkpoints = run_dir / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("epoch000-*.ckpt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(1.0)  # into epoch 1
    os.kill(process.pid, signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    saved = list(checkpoints.glob("step*.ckpt"))
    assert len(saved) == 1, sorted(p.name for p in checkpoints.iterdir())
    step = torch.load(saved[0], map_location="cpu", weights_only=True)["global_step"]
    assert 24 < step < EPOCHS * 24 and newest_checkpoint(checkpoints) == saved[0]
    assert not (run_dir / "summary.json").exists()

    BackdoorCLI(args=[*args, "--ckpt_path", "last"])
    _assert_same_weights(_weights(straight_run), _weights(run_dir))
