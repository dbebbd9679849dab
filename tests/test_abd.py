"""ABD: the crafting objective on hand-made embeddings, PGD's ε-ball, and that a crafted patch beats
random patches on held-out pairs; then both ABD forms fine-tune end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from datamodules.transforms import denormalise
from lightning_app.cli import BackdoorCLI
from modules.cleaning.abd import load_patch
from modules.core.adversarial import CraftingWeights, crafting_objective, paste_patch, pgd_perturb, random_positions
from modules.core.losses import info_nce
from modules.core.model_loading import ModelConfig, build_model

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def test_info_nce_matches_a_direct_computation():
    a = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    b = F.normalize(torch.tensor([[0.8, 0.6], [0.0, 1.0], [-1.0, 0.2]]), dim=1)
    scale = 10.0
    sim = [[scale * float(a[i] @ b[j]) for j in range(3)] for i in range(3)]
    rows = sum(-sim[i][i] + math.log(sum(math.exp(s) for s in sim[i])) for i in range(3)) / 3
    cols = sum(-sim[j][j] + math.log(sum(math.exp(sim[i][j]) for i in range(3))) for j in range(3)) / 3
    assert info_nce(a, b, scale).item() == pytest.approx((rows + cols) / 2, rel=1e-5)


def test_crafting_objective_terms_and_weights():
    perturbed = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.2]]), dim=1)
    clean = F.normalize(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), dim=1)
    text = F.normalize(torch.tensor([[0.3, 1.0], [1.0, -0.5]]), dim=1)
    terms = crafting_objective(perturbed, clean, text, 5.0, CraftingWeights(leave=2.0, collapse=3.0, imitate=0.5))
    center = F.normalize(perturbed.mean(0), dim=0)
    assert terms["collapse"].item() == pytest.approx(float((perturbed @ center).mean()), rel=1e-6)
    assert terms["leave"].item() == pytest.approx(info_nce(perturbed, text, 5.0).item())
    assert terms["imitate"].item() == pytest.approx(info_nce(perturbed, clean, 5.0).item())
    expected = 2.0 * terms["leave"] + 3.0 * terms["collapse"] + 0.5 * terms["imitate"]
    assert terms["objective"].item() == pytest.approx(expected.item(), rel=1e-6)
    # features that collapse onto one point score a collapse of 1
    same = F.normalize(torch.ones(4, 2), dim=1)
    assert crafting_objective(same, same, same, 1.0)["collapse"].item() == pytest.approx(1.0)


def test_paste_patch_puts_the_patch_where_asked_and_keeps_the_rest():
    images = torch.randn(2, 3, 8, 8)
    patch = torch.rand(3, 3, 3)
    out = paste_patch(images, patch, torch.tensor([[0, 0], [5, 2]]), MEAN, STD)
    torch.testing.assert_close(denormalise(out, MEAN, STD)[1, :, 5:8, 2:5], patch)
    keep = torch.ones(2, 3, 8, 8, dtype=torch.bool)
    keep[0, :, 0:3, 0:3] = False
    keep[1, :, 5:8, 2:5] = False
    assert torch.equal(out[keep], images[keep])
    assert (random_positions(100, 8, 3) <= 5).all()


def test_pgd_stays_in_the_epsilon_ball_and_raises_the_objective():
    torch.manual_seed(0)
    pixels = torch.rand(4, 3, 8, 8)
    images = (pixels - torch.tensor(MEAN).view(-1, 1, 1)) / torch.tensor(STD).view(-1, 1, 1)
    weight = torch.randn(3 * 8 * 8)

    def objective(x):
        return torch.tanh(x.flatten(1) @ weight / 20).sum()

    eps = 4 / 255
    adv = pgd_perturb(images, objective, eps, steps=10, step_size=1 / 255, mean=MEAN, std=STD)
    delta = denormalise(adv, MEAN, STD) - pixels
    assert delta.abs().max().item() <= eps + 1e-5
    assert denormalise(adv, MEAN, STD).min() >= -1e-6 and denormalise(adv, MEAN, STD).max() <= 1 + 1e-6
    assert objective(adv) > objective(images)


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


@pytest.mark.slow
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


@pytest.mark.slow
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
