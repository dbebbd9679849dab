"""A run's record: one fit per run directory at a time, no resume under another attack, write-once
poison manifest and trigger, one last.ckpt, step checkpoints pruned across resumes, no `.partial`
left by a failed write.

The unit tests: tests/unit/lightning_app/test_run_guard.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.run_guard import _args, _corrupt_one_eval_image

from datamodules.poison import load_trigger
from lightning_app.cli import BackdoorCLI


def test_resume_under_another_attack_is_refused_and_the_record_kept(small_benchmark, tmp_path):
    run_dir = tmp_path / "run"
    BackdoorCLI(args=_args(small_benchmark, run_dir))
    manifest = (run_dir / "poison" / "manifest.json").read_bytes()
    trigger = (run_dir / "trigger" / "trigger.json").read_bytes()
    with pytest.raises(ValueError, match="data.init_args.poison"):
        BackdoorCLI(args=_args(small_benchmark, run_dir, "--trainer.max_epochs", "2", "--ckpt_path", "last",
                               "--data.init_args.poison.rate", "0.2", "--data.init_args.poison.target", "star"))
    assert (run_dir / "poison" / "manifest.json").read_bytes() == manifest
    assert (run_dir / "trigger" / "trigger.json").read_bytes() == trigger
    config = (run_dir / "config.yaml").read_bytes()
    with pytest.raises(ValueError, match="model.init_args.objective: 'mmcl' → 'cyclip'"):
        BackdoorCLI(args=_args(small_benchmark, run_dir, "--ckpt_path", "last", "--model.init_args.objective", "cyclip"))
    with pytest.raises(ValueError, match="not a checkpoint of this run"):  # another run's weights, resumed as this run's
        BackdoorCLI(args=_args(small_benchmark, tmp_path / "new", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")))
    assert (run_dir / "config.yaml").read_bytes() == config
    # the same attack resumes, and keeps one last.ckpt and at most 2 step checkpoints over the resume; writes
    # killed midway (names never written again) are cleared when the next fit takes the directory
    stale = [run_dir / "checkpoints" / "step0000001.ckpt.partial", run_dir / "poison" / "manifest.json.partial"]
    for path in stale:
        path.write_bytes(b"cut")
    BackdoorCLI(args=_args(small_benchmark, run_dir, "--trainer.max_epochs", "2", "--ckpt_path", "last",
                           "--checkpoint_every_n_steps", "3"))
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert [n for n in names if n.startswith("last")] == ["last.ckpt"]
    assert len([n for n in names if n.startswith("step")]) == 2
    assert not any(path.exists() for path in stale)
    assert (run_dir / "poison" / "manifest.json").read_bytes() == manifest


def test_a_fit_with_a_corrupt_eval_image_finishes_and_reports_it(small_benchmark, tmp_path):
    eval_dir, _ = _corrupt_one_eval_image(Path(small_benchmark.eval_dir), tmp_path)
    run_dir = tmp_path / "run"
    BackdoorCLI(args=_args(small_benchmark, run_dir, "--data.init_args.eval.directory", str(eval_dir)))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["eval_skipped_images"] == 1 and summary["ca_top1"] is not None
    assert "code" in summary  # the commit that made it (None outside a git checkout)


def test_a_fit_refused_by_a_later_check_does_not_block_its_corrected_rerun(small_benchmark, tmp_path):
    """The manifest and trigger are written in prepare_data, before the eval set's classes are checked: a
    refused fit leaves them, with no weights; the corrected fit into the same directory replaces them."""
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="poison target 'banana' is not a class of the eval set"):
        BackdoorCLI(args=_args(small_benchmark, run_dir, "--data.init_args.poison.target", "banana",
                               "--data.init_args.poison.captions", "templates",
                               "--data.init_args.trigger", "datamodules.Blended"))
    assert (run_dir / "poison" / "manifest.json").exists() and not (run_dir / "checkpoints").exists()
    BackdoorCLI(args=_args(small_benchmark, run_dir))
    assert json.loads((run_dir / "poison" / "manifest.json").read_text())["target"] == "triangle"
    assert json.loads((run_dir / "trigger" / "target.json").read_text())["target"] == "triangle"
    assert type(load_trigger(run_dir / "trigger")).__name__ == "BadNet"  # not the refused fit's Blended
    assert (run_dir / "summary.json").exists()
