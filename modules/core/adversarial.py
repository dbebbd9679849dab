"""Adversarial views for ABD (Liang et al., arXiv 2409.15968), as pure functions over tensors.

ABD's observation: in a poisoned CLIP, adversarial images land in feature regions like those of
backdoored images. The crafting objective (to maximise) makes perturbed images act as a trigger does:
- `leave`: the multimodal contrastive loss of perturbed images against their own captions (they stop
  matching them);
- `collapse`: mean cosine similarity of the perturbed images' features to their batch mean (they all
  move to one region, as triggered images move to the target);
- `imitate` (ABD's backdoor-imitation term L_bd): the InfoNCE loss between perturbed and clean
  features of the same model (a triggered image's features no longer identify its clean version).
Images here are normalised model inputs; perturbations live in pixel space [0, 1] and are mapped
through the normalisation, so ε and the patch are in pixel units.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from datamodules.transforms import denormalise, normalise_pixels
from modules.core.losses import info_nce


@dataclass
class CraftingWeights:
    """Weights of the crafting objective's terms."""

    leave: float = 1.0
    """Multimodal contrastive loss of perturbed images against their own captions."""
    collapse: float = 1.0
    """Mean cosine similarity of perturbed features to their batch mean."""
    imitate: float = 1.0
    """L_bd: InfoNCE between perturbed and clean image features."""


def crafting_objective(perturbed: torch.Tensor, clean: torch.Tensor, text: torch.Tensor,
                       scale: torch.Tensor | float, weights: CraftingWeights = CraftingWeights()) -> dict[str, torch.Tensor]:
    """The objective to maximise and its terms, over normalised features (N, D) of the perturbed
    images, the clean images and the captions."""
    leave = info_nce(perturbed, text, scale)
    center = F.normalize(perturbed.mean(dim=0), dim=0)
    collapse = (perturbed @ center).mean()
    imitate = info_nce(perturbed, clean, scale)
    total = weights.leave * leave + weights.collapse * collapse + weights.imitate * imitate
    return {"objective": total, "leave": leave, "collapse": collapse, "imitate": imitate}


def random_positions(count: int, image_size: int, patch_size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """(count, 2) top-left corners, uniform over the image."""
    return torch.randint(0, image_size - patch_size + 1, (count, 2), generator=generator)


def paste_patch(images: torch.Tensor, patch: torch.Tensor, positions: torch.Tensor, mean, std) -> torch.Tensor:
    """Paste the pixel-space patch (3, s, s) in [0, 1] onto normalised images at `positions` (N, 2);
    differentiable in the patch."""
    size = patch.shape[-1]
    patch = normalise_pixels(patch.clamp(0, 1), mean, std)
    out = images.clone()
    for i, (row, col) in enumerate(positions.tolist()):
        out[i, :, row:row + size, col:col + size] = patch
    return out


def pgd_perturb(images: torch.Tensor, objective: Callable[[torch.Tensor], torch.Tensor], epsilon: float,
                steps: int, step_size: float, mean, std, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image L∞ PGD in pixel space: maximise `objective(normalised images)` within ε of the input,
    starting from a random point of the ε-ball; returns normalised images (no gradient)."""
    pixels = denormalise(images.detach(), mean, std)
    noise = torch.rand(pixels.shape, generator=generator, dtype=pixels.dtype).to(pixels.device)
    delta = (noise * 2 - 1) * epsilon
    for _ in range(steps):
        delta.requires_grad_(True)
        adv = (pixels + delta).clamp(0, 1)
        grad, = torch.autograd.grad(objective(normalise_pixels(adv, mean, std)), delta)
        delta = (delta.detach() + step_size * grad.sign()).clamp(-epsilon, epsilon)
    return normalise_pixels((pixels + delta).clamp(0, 1), mean, std).detach()


class PatchOptimisation:
    """What a LightningModule that optimises one pixel-space patch (`self.patch`, in [0, 1]) against a
    frozen model shares: Adam on the patch alone at `optimizer.lr`, and the patch kept in [0, 1]."""

    def on_train_epoch_start(self) -> None:
        self.model.eval()

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        with torch.no_grad():
            self.patch.clamp_(0, 1)

    def configure_optimizers(self):
        return torch.optim.Adam([self.patch], lr=self.optimizer_config.lr)
