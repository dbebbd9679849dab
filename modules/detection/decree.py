"""Trigger inversion without an oracle (DECREE, Feng et al., CVPR 2023), as a model-level backdoor detector.

    python main.py fit --config configs/embedded/decree.yaml     # writes RUN/inversion/

On the frozen image encoder of the model under audit, a mask m and a pattern p (both (0, 1) through a
tanh, DECREE's parameterisation) are optimised on clean images so that the stamped images
x' = (1 − m)·x + m·p all embed alike:

    L = −mean_{i≠j} cos(f(x'_i), f(x'_j)) + λ·‖m‖₁ / (H·W)

A backdoored encoder maps any image carrying its trigger to one place, so a small mask already
collapses the batch; a clean encoder needs most of the image covered. The detector is the smallest
mask (as a fraction of the image, `mask_fraction`; DECREE reports the L1 norm, `mask_l1`) among the
steps whose batch similarity reached `threshold`. λ adapts as DECREE's does: ×`lambda_factor` after
`patience` steps at or above the threshold (push the mask smaller), ÷ after `patience` below it.

Choices made here: the norm is divided by the image area so that models at 32 and 224 px compare; the
images are normalised with the audited model's own constants (DECREE's CLIP branch uses ImageNet's);
the recovered trigger (the best mask and its pattern) is written in an attack's `trigger/` format
(`RUN/inversion/trigger/`, a `datamodules.MaskedPattern`), so it can be pasted, measured and repaired
with like any attack's trigger.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from datamodules.poison.patch_triggers import MaskedPattern
from datamodules.transforms import denormalise, normalise_pixels
from modules.core.base import CLIPModule, OptimizerConfig
from modules.core.model_loading import ModelConfig
from modules.core.summary_columns import SummaryColumns

INVERSION_DIR = "inversion"


def mean_pairwise_similarity(features: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over distinct pairs of normalised features (N, D), N ≥ 2."""
    n = len(features)
    assert n >= 2, "pairwise similarity needs two features"
    gram = features @ features.t()
    return (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))


def decree_loss(features: torch.Tensor, mask: torch.Tensor, lam: float) -> dict[str, torch.Tensor]:
    """DECREE's objective over the stamped images' normalised features and the mask (1, H, W) in [0, 1]."""
    similarity = mean_pairwise_similarity(features)
    fraction = mask.abs().sum() / mask[0].numel()
    return {"loss": -similarity + lam * fraction, "similarity": similarity, "mask_fraction": fraction}


class InvertTrigger(CLIPModule):
    """DECREE's inversion on a frozen model; writes RUN/inversion/{inversion.json, trigger/}."""

    changes_weights = False
    summary_columns = CLIPModule.summary_columns + (
        SummaryColumns("inversion", "inversion_", headings={"inversion_mask_fraction": "inverted mask (fraction of image)",
                                                            "inversion_mask_l1": "inverted mask L1 (px)"}),)

    def __init__(self, model: ModelConfig = ModelConfig(), optimizer: OptimizerConfig = OptimizerConfig(lr=0.5, warmup_steps=1),
                 lam: float = 1.0, threshold: float = 0.99, patience: int = 5, lambda_factor: float = 1.5,
                 seed: int = 0):
        """
        Args:
            model: The model under audit (frozen).
            optimizer: `lr` is Adam's step size on the tanh parameters (DECREE: 0.5, betas (0.5, 0.9)).
            lam: Initial weight of the mask's size (L1 norm over the image area).
            threshold: Mean pairwise cosine similarity at which the stamped batch counts as collapsed
                (DECREE: 0.99).
            patience: Steps above (below) the threshold before λ is raised (lowered).
            lambda_factor: λ's multiplier when it adapts (DECREE: 5 per epoch of its loop; here per
                `patience` steps, so gentler).
            seed: Seed of the initial mask and pattern.
        """
        super().__init__(model, optimizer)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"model.threshold must be in (0, 1), got {threshold}")
        if patience < 1 or lambda_factor <= 1.0 or lam < 0:
            raise ValueError(f"model.patience must be ≥ 1, model.lambda_factor > 1 and model.lam ≥ 0, got "
                             f"{patience}, {lambda_factor}, {lam}")
        self.model.requires_grad_(False)
        size = self.input_spec().image_size
        generator = torch.Generator().manual_seed(seed)
        # start from a mask of about a quarter of the image and a random pattern
        self.mask_param = torch.nn.Parameter(torch.full((1, size, size), -0.55) + 0.01 * torch.randn(1, size, size, generator=generator))
        self.pattern_param = torch.nn.Parameter(torch.randn(3, size, size, generator=generator))
        self.lam = lam
        self.threshold = threshold
        self.patience = patience
        self.lambda_factor = lambda_factor
        self._above = 0
        self._below = 0
        self.best: dict | None = None
        """The smallest mask seen at or above the threshold: its fraction, similarity, step, mask and pattern."""

    def mask(self) -> torch.Tensor:
        return (torch.tanh(self.mask_param) + 1) / 2

    def pattern(self) -> torch.Tensor:
        return (torch.tanh(self.pattern_param) + 1) / 2

    def stamp(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images → the same with the mask and pattern applied in pixel space, normalised."""
        spec = self.input_spec()
        pixels = denormalise(images, spec.mean, spec.std)
        mask = self.mask()
        return normalise_pixels((1 - mask) * pixels + mask * self.pattern(), spec.mean, spec.std)

    def on_train_epoch_start(self) -> None:
        self.model.eval()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        features = self.encode_image(self.stamp(batch["image"]))
        terms = decree_loss(features, self.mask(), self.lam)
        self._track(terms["similarity"].item(), terms["mask_fraction"].item())
        for name, value in terms.items():
            self.log(f"inversion/{name}", value, prog_bar=name != "loss")
        self.log("inversion/lambda", self.lam)
        return terms["loss"]

    def _track(self, similarity: float, fraction: float) -> None:
        """Keep the smallest collapsing mask and adapt λ."""
        if similarity >= self.threshold:
            if self.best is None or fraction < self.best["mask_fraction"]:
                self.best = {"mask_fraction": fraction, "similarity": similarity, "step": self.global_step,
                             "mask": self.mask().detach().cpu().clone(), "pattern": self.pattern().detach().cpu().clone()}
            self._above, self._below = self._above + 1, 0
            if self._above >= self.patience:
                self.lam, self._above = self.lam * self.lambda_factor, 0
        else:
            self._above, self._below = 0, self._below + 1
            if self._below >= self.patience:
                self.lam, self._below = self.lam / self.lambda_factor, 0

    def configure_optimizers(self):
        return torch.optim.Adam([self.mask_param, self.pattern_param], lr=self.optimizer_config.lr, betas=(0.5, 0.9))

    def result(self) -> dict:
        """The detector's figures: the best collapsing mask's size, or the last mask's when none collapsed."""
        mask = self.best["mask"] if self.best else self.mask().detach().cpu()
        fraction = float(mask.sum() / mask[0].numel())
        return {"reached": self.best is not None, "mask_fraction": fraction, "mask_l1": float(mask.sum()),
                "similarity": self.best["similarity"] if self.best else None,
                "step": self.best["step"] if self.best else None, "threshold": self.threshold,
                "final_lambda": self.lam}

    def recovered_trigger(self) -> MaskedPattern:
        best = self.best or {"mask": self.mask().detach().cpu(), "pattern": self.pattern().detach().cpu()}
        return MaskedPattern.from_tensors(best["mask"], best["pattern"])

    def on_fit_end(self) -> None:
        with self.gathered_weights():  # every rank: under ZeRO-3 the mask and pattern are partitions here
            trigger = self.recovered_trigger()
        if self.global_rank == 0:
            self._write(trigger)

    def _write(self, trigger: MaskedPattern) -> None:
        out = Path(self.trainer.default_root_dir) / INVERSION_DIR
        out.mkdir(parents=True, exist_ok=True)
        trigger.save(out / "trigger", self.input_spec().image_size)
        (out / "inversion.json").write_text(json.dumps(self.result(), indent=1))

    def summary_extras(self) -> dict:
        return {"inversion": self.result()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["inversion_state"] = {"lam": self.lam, "above": self._above, "below": self._below, "best": self.best}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        state = checkpoint.get("inversion_state") or {}
        self.lam = state.get("lam", self.lam)
        self._above, self._below = state.get("above", 0), state.get("below", 0)
        self.best = state.get("best")

