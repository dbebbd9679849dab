"""PAR's loss (modules/cleaning/par.py) against a hand computation, and its perturbations: seeded by step,
in range, and the incoming model left frozen."""

from __future__ import annotations

import pytest
import torch

from modules.cleaning.par import par_loss, thresholded_distance


def test_the_loss_is_the_clip_loss_minus_half_of_each_distance_below_tau():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image0 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # squared distances 2 and 0: mean 1.0
    text = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    text0 = torch.tensor([[0.6, 0.8], [1.0, 0.0]])  # 0
    terms = par_loss(torch.tensor(3.0), image, text, image0, text0, tau=2.15)
    assert terms["distance_image"].item() == pytest.approx(1.0) and terms["distance_text"].item() == 0.0
    assert terms["loss"].item() == pytest.approx(3.0 - 0.5 * 1.0)
    # past τ the term switches off: the distance stays bounded
    assert thresholded_distance(image, image0, tau=0.5).item() == 0.0
    assert thresholded_distance(image, image0, tau=1.0).item() == pytest.approx(1.0)  # at τ: kept


def test_the_distance_term_pushes_away_from_the_incoming_embeddings():
    image = torch.tensor([[0.8, 0.6]], requires_grad=True)
    incoming = torch.tensor([[1.0, 0.0]])
    loss = par_loss(torch.tensor(0.0), image, torch.zeros(1, 2), incoming, torch.zeros(1, 2), tau=2.15)["loss"]
    loss.backward()
    step = -image.grad  # gradient descent moves the embedding along −∇
    assert torch.dot(step[0], image.detach()[0] - incoming[0]) > 0  # away from the poisoned model's


def test_perturbations_are_drawn_by_step_and_stay_in_pixel_range():
    from modules.cleaning.par import PerturbAndRecover
    from modules.core.model_loading import ModelConfig

    module = PerturbAndRecover(ModelConfig(name="configs/models/tiny-rn32.json"), noise_p=1.0, erase_p=1.0)
    spec = module.input_spec()
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    images = (torch.rand(4, 3, 32, 32) - mean) / std
    first, again = module.perturb(images), module.perturb(images)
    assert torch.equal(first, again) and not torch.equal(first, images)
    pixels = first * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5  # erased pixels are 0 normalised: the mean colour
    assert not any(p.requires_grad for p in module.incoming.parameters())
    assert "incoming" not in dict(module.named_children())  # neither checkpointed nor optimised
