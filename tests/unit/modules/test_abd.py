"""ABD: the crafting objective on hand-made embeddings, PGD's ε-ball, and that a crafted patch beats
random patches on held-out pairs; then both ABD forms fine-tune end to end.

The fits of these tests: tests/integration/test_abd_fit.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from datamodules.transforms import denormalise
from modules.core.adversarial import CraftingWeights, crafting_objective, paste_patch, pgd_perturb, random_positions
from modules.core.losses import info_nce

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
