"""ABD: the crafting objective on hand-made embeddings, PGD's ε-ball, and that a crafted patch beats
random patches on held-out pairs; then both ABD forms fine-tune end to end.

The unit tests: tests/unit/modules/test_abd.py."""

from __future__ import annotations

import json

import pytest
import torch

from lightning_app.cli import BackdoorCLI
from modules.cleaning.abd import load_patch
from modules.core.adversarial import crafting_objective, paste_patch, random_positions
from modules.core.model_loading import ModelConfig, build_model


def _craft_args(bench, run_dir, weights, *extra):
    return ["fit", "--config", "configs/embedded/abd_craft.yaml", "--trainer.default_root_dir", str(run_dir),
            "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "2",
            "--model.init_args.model.pretrained", str(weights), "--model.init_args.patch_size", "6",
            "--data.init_args.embedded", "null", "--data.init_args.train_shards", bench.finetune_urls,
            "--data.init_args.eval.directory", bench.eval_dir, "--data.init_args.trigger_dir", "null",
            "--data.init_args.batch_size", "25", "--data.init_args.num_workers", "1", *extra]


@pytest.fixture(scope="module")
def model_weights(tmp_path_factory):
    """A fixed (randomly initialised) tiny model as a weight file, so every use loads the same model."""
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model, _ = build_model(ModelConfig(name="configs/models/tiny-rn32.json"))
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def crafted(small_benchmark, model_weights, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("craft") / "run"
    BackdoorCLI(args=_craft_args(small_benchmark, run_dir, model_weights))
    return run_dir


def test_crafted_patch_beats_random_patches_on_held_out_pairs(small_benchmark, model_weights, crafted):
    from datamodules.poison import PoisonConfig, Poisoner
    from datamodules.shards import expand_shards
    from datamodules.stream import PairStream
    from datamodules.transforms import TrainSample

    patch = load_patch(crafted / "adversarial")
    assert patch.shape == (3, 6, 6) and 0 <= patch.min() and patch.max() <= 1
    summary = json.loads((crafted / "summary.json").read_text())
    assert summary["steps"] == 2 * 200 // 25
    model, spec = build_model(ModelConfig(name="configs/models/tiny-rn32.json", pretrained=str(model_weights)))
    model.eval()
    # held out: pretraining pairs; the patch was crafted on the fine-tuning split
    held_out = PairStream(expand_shards(small_benchmark.pretrain_urls), TrainSample(spec, Poisoner(None, [], PoisonConfig())),
                          100, 1, 1, 0, 0, 0.5)
    batch = next(iter(held_out))

    def score(p: torch.Tensor) -> float:
        with torch.no_grad():
            clean = model.encode_image(batch["image"], normalize=True)
            text = model.encode_text(batch["text"], normalize=True)
            positions = random_positions(len(clean), 32, 6, torch.Generator().manual_seed(1))
            patched = model.encode_image(paste_patch(batch["image"], p, positions, spec.mean, spec.std), normalize=True)
            return crafting_objective(patched, clean, text, model.logit_scale.exp().clamp(max=100))["objective"].item()

    crafted_score = score(patch)
    random_scores = [score(torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(s))) for s in range(5)]
    assert crafted_score > max(random_scores), (crafted_score, random_scores)


@pytest.mark.parametrize("form", ["patch", "pgd"])
def test_abd_fine_tunes_end_to_end_and_reports_before_and_after(small_benchmark, model_weights, crafted, form, tmp_path):
    run_dir = tmp_path / "abd"
    extra = (["--model.init_args.patch_dir", str(crafted / "adversarial")] if form == "patch"
             else ["--model.init_args.adversarial", "pgd", "--model.init_args.pgd_steps", "2"])
    BackdoorCLI(args=[
        "fit", "--config", "configs/embedded/abd.yaml", "--trainer.default_root_dir", str(run_dir),
        "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1",
        "--model.init_args.model.pretrained", str(model_weights), "--trainer.log_every_n_steps", "1", *extra,
        "--data.init_args.embedded", "null", "--data.init_args.train_shards", small_benchmark.finetune_urls,
        "--data.init_args.eval.directory", small_benchmark.eval_dir, "--data.init_args.trigger_dir", "null",
        "--data.init_args.trigger", "datamodules.BadNet", "--data.init_args.batch_size", "25",
        "--data.init_args.num_workers", "1", "--model.init_args.optimizer.warmup_steps", "2",
        "--data.init_args.text_synonyms", "none",  # needs no WordNet: test_text_augment tests the synonyms
    ])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["module"] == "ABD" and summary["steps"] == 200 // 25
    assert summary["before"] is not None and 0 <= summary["asr"] <= 1
    metrics = (run_dir / "metrics.csv").read_text()
    assert "train/loss_ss" in metrics
