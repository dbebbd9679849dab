"""ABD (Liang et al., arXiv 2409.15968): CleanCLIP with the augmented image replaced by an adversarial one.

Two stages, each a `fit` with its own run directory:

    python main.py fit --config configs/embedded/abd_craft.yaml   # universal adversarial patch → RUN/adversarial/
    python main.py fit --config configs/embedded/abd.yaml         # the defense, reading that patch

`CraftAdversarialPatch` optimises one patch against the frozen poisoned model on the clean fine-tuning
data (direct optimisation; the paper's generator is optional). Its `summary.json` is the crafting cost.
`ABD` fine-tunes with L = λ1·L_CLIP(I, T) + λ2·[L(I, I_adv) + L(T, EDA(T))], where I_adv is I with the
patch pasted at a random place, or (`adversarial: pgd`) a per-image L∞ PGD example made on the fly;
`refresh_every` re-optimises the patch against the model being cleaned as it changes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Optional

import torch
from safetensors.torch import load_file, save_file
from torchvision.utils import save_image

from modules.cleaning.finetune import CleanCLIP
from modules.core.adversarial import (
    CraftingWeights,
    PatchOptimisation,
    crafting_objective,
    paste_patch,
    pgd_perturb,
    random_positions,
)
from modules.core.base import CLIPModule, OptimizerConfig, eval_mode
from modules.core.losses import cleanclip_loss
from modules.core.model_loading import ModelConfig

PATCH_FILE = "patch.safetensors"


def load_patch(directory: str | Path) -> torch.Tensor:
    path = Path(directory) / PATCH_FILE
    if not path.exists():
        raise ValueError(f"adversarial patch {path} does not exist: run the crafting stage (abd_craft) first")
    return load_file(str(path))["patch"]


class _Crafting:
    """What both modules need to compute the crafting objective for a batch."""

    def _generator(self, salt: int) -> torch.Generator:
        return torch.Generator().manual_seed(hash((self.seed, self.global_step, salt)) & 0x7FFF_FFFF)

    def _targets(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad(), eval_mode(self.model):
            return self.encode_image(batch["image"]), self.encode_text(batch["text"])

    def _paste(self, images: torch.Tensor, patch: torch.Tensor) -> torch.Tensor:
        spec = self.input_spec()
        positions = random_positions(len(images), spec.image_size, patch.shape[-1], self._generator(1))
        return paste_patch(images, patch, positions, spec.mean, spec.std)


class CraftAdversarialPatch(PatchOptimisation, _Crafting, CLIPModule):
    """Crafts ABD's universal adversarial patch against a frozen (poisoned) model."""

    changes_weights = False

    def __init__(self, model: ModelConfig = ModelConfig(), optimizer: OptimizerConfig = OptimizerConfig(lr=0.05, warmup_steps=1),
                 patch_size: int = 8, weights: CraftingWeights = CraftingWeights(), seed: int = 0):
        """
        Args:
            model: The poisoned model the patch is crafted against (frozen).
            optimizer: `lr` is Adam's step size on the patch pixels (in [0, 1]).
            patch_size: Side of the square patch in pixels at the model's input size.
            weights: Weights of the crafting objective's terms (leave, collapse, imitate).
            seed: Seed of the initial patch and of the paste positions.
        """
        super().__init__(model, optimizer)
        if patch_size < 1 or patch_size > self.input_spec().image_size:
            raise ValueError(f"model.patch_size must be in [1, {self.input_spec().image_size}], got {patch_size}")
        self.model.requires_grad_(False)
        self.weights = weights
        self.seed = seed
        self.patch = torch.nn.Parameter(torch.rand(3, patch_size, patch_size, generator=torch.Generator().manual_seed(seed)))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        clean, text = self._targets(batch)
        patched = self.encode_image(self._paste(batch["image"], self.patch))
        terms = crafting_objective(patched, clean, text, self.logit_scale().detach(), self.weights)
        for name, value in terms.items():
            self.log(f"craft/{name}", value, prog_bar=name == "objective")
        return -terms["objective"]

    def on_fit_end(self) -> None:
        with self.gathered_weights():  # every rank: under ZeRO-3 the patch is a partition outside a step
            patch = self.patch.detach().clamp(0, 1).cpu().contiguous()
        if self.global_rank == 0:
            self._write(patch)

    def _write(self, patch: torch.Tensor) -> None:
        out = Path(self.trainer.default_root_dir) / "adversarial"
        out.mkdir(parents=True, exist_ok=True)
        save_file({"patch": patch}, str(out / PATCH_FILE))
        save_image(patch, str(out / "patch.png"))
        (out / "adversarial.json").write_text(json.dumps(
            {"form": "universal_patch", "size": patch.shape[-1], "weights": vars(self.weights),
             "steps": self.trainer.global_step, "seed": self.seed}, indent=1))


class ABD(_Crafting, CleanCLIP):
    """ABD defense: CleanCLIP's loss with AutoAugment(I) replaced by an adversarial image."""

    def __init__(
        self,
        model: ModelConfig = ModelConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        lambda_clip: float = 1.0,
        lambda_ss: float = 1.0,
        adversarial: Literal["patch", "pgd"] = "patch",
        patch_dir: Optional[str] = None,
        refresh_every: Optional[int] = None,
        refresh_steps: int = 5,
        refresh_lr: float = 0.05,
        epsilon: float = 4 / 255,
        pgd_steps: int = 10,
        pgd_step_size: float = 1 / 255,
        weights: CraftingWeights = CraftingWeights(),
        seed: int = 0,
    ):
        """
        Args:
            model: The poisoned model to clean.
            optimizer: AdamW and the warm-up + cosine schedule of the fine-tuning.
            lambda_clip: λ1, weight of L_CLIP(I, T).
            lambda_ss: λ2, weight of L(I, I_adv) + L(T, EDA(T)).
            adversarial: "patch" (the crafted universal patch) or "pgd" (per-image L∞ PGD each step).
            patch_dir: The crafting run's `adversarial/` directory (for "patch").
            refresh_every: Re-optimise the patch against the current model every N steps (None: never).
            refresh_steps: Adam steps on the patch per refresh (on the current batch).
            refresh_lr: Adam step size of a refresh.
            epsilon: PGD's L∞ radius in pixel units ([0, 1]).
            pgd_steps: PGD iterations per batch.
            pgd_step_size: PGD step in pixel units.
            weights: Weights of the crafting objective (used by PGD and refreshes).
            seed: Seed of paste positions and PGD starts.
        """
        super().__init__(model, optimizer, lambda_clip=lambda_clip, lambda_ss=lambda_ss)
        if adversarial == "patch" and patch_dir is None:
            raise ValueError("model.adversarial: patch needs model.patch_dir (the crafting run's adversarial/ directory)")
        if epsilon <= 0 or pgd_steps < 1:
            raise ValueError("model.epsilon must be > 0 and model.pgd_steps ≥ 1")
        self.adversarial = adversarial
        self.refresh_every = refresh_every
        self.refresh_steps = refresh_steps
        self.refresh_lr = refresh_lr
        self.epsilon = epsilon
        self.pgd_steps = pgd_steps
        self.pgd_step_size = pgd_step_size
        self.weights = weights
        self.seed = seed
        self.patch_dir = patch_dir
        self.register_buffer("patch", torch.zeros(0), persistent=True)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.adversarial == "patch":  # here, not in __init__: a config must parse before the crafting ran
            self.patch = load_patch(self.patch_dir).to(self.device)

    def _refresh_patch(self, batch: dict, clean: torch.Tensor, text: torch.Tensor) -> None:
        patch = self.patch.detach().clone().requires_grad_(True)
        optimizer = torch.optim.Adam([patch], lr=self.refresh_lr)
        with eval_mode(self.model):
            for _ in range(self.refresh_steps):
                feats = self.encode_image(self._paste(batch["image"], patch))
                objective = crafting_objective(feats, clean, text, self.logit_scale().detach(), self.weights)["objective"]
                grad, = torch.autograd.grad(-objective, patch)
                patch.grad = grad
                optimizer.step()
                with torch.no_grad():
                    patch.clamp_(0, 1)
        self.patch.copy_(patch.detach())

    def adversarial_images(self, batch: dict) -> torch.Tensor:
        """The batch's images under the adversarial patch (refreshed every `refresh_every` steps) or PGD, in fp32
        under a mixed-precision step: the crafting's gradients are not rounded to 16 bits."""
        with self.full_precision():
            return self._adversarial_images(batch)

    def _adversarial_images(self, batch: dict) -> torch.Tensor:
        clean, text = self._targets(batch)
        if self.adversarial == "patch":
            if self.refresh_every and self.global_step > 0 and self.global_step % self.refresh_every == 0:
                self._refresh_patch(batch, clean, text)
            return self._paste(batch["image"], self.patch)
        spec = self.input_spec()

        def objective(images: torch.Tensor) -> torch.Tensor:
            feats = self.encode_image(images)
            return crafting_objective(feats, clean, text, self.logit_scale().detach(), self.weights)["objective"]

        with eval_mode(self.model):
            return pgd_perturb(batch["image"], objective, self.epsilon, self.pgd_steps, self.pgd_step_size,
                               spec.mean, spec.std, self._generator(2))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        image_adv = self.adversarial_images(batch)
        scale = self.logit_scale()
        terms = cleanclip_loss(self.clip_loss, self.encode_image(batch["image"]), self.encode_text(batch["text"]),
                               self.encode_image(image_adv), self.encode_text(batch["text_aug"]), scale,
                               self.clip_weight, self.ssl_weight)
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss")
        self.log("train/logit_scale", scale)
        return terms["loss"]
