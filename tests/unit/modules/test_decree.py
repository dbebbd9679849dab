"""DECREE's inversion: the objective on hand-made features, the recovered trigger's round trip, and an
inversion that finds a planted shortcut's region with a small mask where a shortcut-free encoder needs
a large one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from datamodules.poison import MaskedPattern, load_trigger
from datamodules.transforms import denormalise
from modules.core.model_loading import ModelConfig
from modules.detection.decree import InvertTrigger, decree_loss, mean_pairwise_similarity


def test_pairwise_similarity_and_loss_by_hand():
    features = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), dim=-1)
    # pairs: (1,2) 0, (1,3) √½, (2,3) √½ → mean over the 6 ordered pairs = (0 + 2·0.7071)·2 / 6
    expected = 2 * (2 ** -0.5) * 2 / 6
    assert mean_pairwise_similarity(features).item() == pytest.approx(expected, abs=1e-6)
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1.0
    terms = decree_loss(features, mask, lam=2.0)
    assert terms["mask_fraction"].item() == pytest.approx(0.25)
    assert terms["loss"].item() == pytest.approx(-expected + 2.0 * 0.25, abs=1e-6)


def test_the_recovered_trigger_reloads_bit_exact(tmp_path):
    generator = torch.Generator().manual_seed(0)
    trigger = MaskedPattern.from_tensors(torch.rand(1, 8, 8, generator=generator), torch.rand(3, 8, 8, generator=generator))
    trigger.save(tmp_path, 8)
    again = load_trigger(tmp_path)
    image = torch.rand(3, 8, 8)
    assert torch.equal(again.apply(image, "k"), trigger.apply(image, "k"))
    with pytest.raises(ValueError, match="mask"):
        MaskedPattern.from_tensors(torch.rand(8, 8), torch.rand(3, 8, 8))


REGION = (slice(2, 8), slice(20, 26))  # the planted trigger: a bright 6×6 square


def _toy_encoder(spec, shortcut: bool):
    """Random linear features of the pixels; with `shortcut`, a bright REGION adds a large fixed direction
    (a backdoor: any image with the square maps near one point)."""
    generator = torch.Generator().manual_seed(1)
    weights = torch.randn(3 * 32 * 32, 16, generator=generator) / 30
    direction = F.normalize(torch.randn(16, generator=generator), dim=0)

    def encode(images: torch.Tensor) -> torch.Tensor:
        pixels = denormalise(images, spec.mean, spec.std)
        features = (pixels - 0.5).flatten(1) @ weights  # centred: clean images spread over the sphere
        if shortcut:
            brightness = pixels[:, :, REGION[0], REGION[1]].mean(dim=(1, 2, 3))
            features = features + 40 * torch.sigmoid(12 * (brightness - 0.75))[:, None] * direction
        return F.normalize(features, dim=-1)

    return encode


def _invert(shortcut: bool, steps: int = 300) -> InvertTrigger:
    torch.manual_seed(0)
    module = InvertTrigger(ModelConfig(name="configs/models/tiny-rn32.json"), threshold=0.95, lam=1.0, patience=5)
    module.encode_image = _toy_encoder(module.input_spec(), shortcut)
    (optimizer,) = [module.configure_optimizers()]
    images = torch.randn(24, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 0.5
    for _ in range(steps):
        optimizer.zero_grad()
        module.training_step({"image": images}, 0).backward()
        optimizer.step()
    return module


@pytest.mark.filterwarnings("ignore::UserWarning")  # self.log outside a Trainer
def test_inversion_finds_the_planted_shortcut_with_a_small_mask():
    poisoned = _invert(shortcut=True)
    clean = _invert(shortcut=False)
    found, baseline = poisoned.result(), clean.result()
    assert found["reached"]
    mask = poisoned.best["mask"][0]
    inside = mask[REGION].sum() / mask.sum()
    assert inside > 0.5, f"only {inside:.2f} of the recovered mask lies on the planted square"
    assert found["mask_fraction"] < 0.1
    assert not baseline["reached"] or baseline["mask_fraction"] > 3 * found["mask_fraction"]
