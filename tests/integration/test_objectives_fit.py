"""Pretraining objectives: SigLIP and CyCLIP against hand computations, their DDP forms (and CLIP's)
against one process on the concatenated batch, and (slow) a SigLIP pretraining whose bias survives export.

The unit tests: tests/unit/modules/test_objectives.py."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.mark.parametrize("objective", ["siglip", "cyclip"])
def test_pretraining_with_each_objective_runs_and_a_siglip_model_exports(small_benchmark, tmp_path, objective):
    import open_clip

    from lightning_app.cli import BackdoorCLI
    from lightning_app.export import export_run

    run_dir = tmp_path / "run"
    BackdoorCLI(args=["fit", "--config", "configs/embedded/badnet.yaml", "--trainer.default_root_dir", str(run_dir),
                      "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
                      "--data.init_args.embedded", "null", "--data.init_args.train_shards", small_benchmark.pretrain_urls,
                      "--data.init_args.eval.directory", small_benchmark.eval_dir, "--data.init_args.batch_size", "32",
                      "--model.init_args.optimizer.warmup_steps", "5", "--model.init_args.objective", objective])
    summary = json.loads((run_dir / "summary.json").read_text())
    metrics = summary["metrics"]
    assert summary["ca_top1"] is not None and ("train/loss_cyclic_in" in metrics) == (objective == "cyclip")
    if objective == "siglip":
        state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
        bias = state["model.logit_bias"].item()
        assert bias != pytest.approx(-10.0)  # the bias is trained
        out = export_run(run_dir, tmp_path / "export")
        model = open_clip.create_model(f"local-dir:{out}", pretrained=f"{out}/open_clip_model.safetensors")
        assert model.logit_bias.item() == pytest.approx(bias, abs=1e-4)
