"""A short CPU run through the CLI: trains, evaluates, writes the run directory, resumes.

The unit tests: tests/unit/lightning_app/test_fit_preflight.py."""

import json

import pytest
import torch
from helpers.end_to_end import _args

from datamodules.poison import load_trigger
from lightning_app.cli import BackdoorCLI


def test_fit_writes_the_run_directory_and_resumes(small_benchmark, tmp_path):
    run_dir = tmp_path / "run"
    BackdoorCLI(args=_args(small_benchmark, run_dir))

    summary = json.loads((run_dir / "summary.json").read_text())
    manifest = json.loads((run_dir / "poison" / "manifest.json").read_text())
    assert 0.0 <= summary["ca_top1"] <= summary["ca_top5"] <= 1.0
    assert 0.0 <= summary["asr"] <= 1.0
    assert summary["attack"]["name"] == "badnet"
    assert summary["poison_count"] == manifest["num_poisoned"] == len(manifest["keys"]) > 0
    assert summary["poisoned_captions"] == manifest["captions"] == "dataset" and manifest["caption_pools"]["triangle"]
    assert manifest["num_pairs_scanned"] == 800
    assert summary["steps"] == 800 // 32
    assert summary["data_health"]["good"] >= summary["steps"] * 32
    assert summary["data_health"]["bad_image"] == 0
    for name in ("config.yaml", "metrics.csv", "checkpoints/last.ckpt", "trigger/trigger.json", "trigger/pattern.png"):
        assert (run_dir / name).exists(), name
    assert load_trigger(run_dir / "trigger").describe() == summary["attack"]
    # checkpoints load without unpickling arbitrary objects
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == summary["steps"]

    # a new fit into the same run directory without --ckpt_path is refused before training
    with pytest.raises(ValueError, match="ckpt_path last"):
        BackdoorCLI(args=_args(small_benchmark, run_dir))

    # resuming a finished run with nothing left to train keeps its metrics
    logged = (run_dir / "metrics.csv").read_text()
    BackdoorCLI(args=_args(small_benchmark, run_dir, extra=("--ckpt_path", "last")))
    assert (run_dir / "metrics.csv").read_text() == logged

    # resuming into the existing run directory continues to the new epoch budget
    BackdoorCLI(args=_args(small_benchmark, run_dir, epochs=2, extra=("--ckpt_path", "last")))
    resumed = json.loads((run_dir / "summary.json").read_text())
    assert resumed["steps"] == 2 * summary["steps"]
    assert resumed["epochs"] == 2
