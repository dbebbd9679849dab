"""Contrastive CLIP training: pretraining (`configs/embedded/badnet.yaml`) and the fine-tuning
defenses that differ from it only in data and loss weights: FT (multimodal loss on clean pairs) and
CleanCLIP (`L = λ1·L_CLIP + λ2·L_SS` on clean pairs, Bansal et al. 2023).

    python main.py fit --config configs/embedded/badnet.yaml
    python main.py fit --config configs/embedded/cleanclip.yaml
"""

from __future__ import annotations

from typing import Literal

import torch

from modules.base import CLIPModule, OptimizerConfig
from modules.losses import cleanclip_loss
from modules.model_loading import ModelConfig


class CLIPPretraining(CLIPModule):
    def __init__(
        self,
        model: ModelConfig = ModelConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        objective: Literal["mmcl", "mmcl_ssl"] = "mmcl",
        ssl_weight: float = 1.0,
        clip_weight: float = 1.0,
    ):
        """
        Args:
            model: The open_clip model and its starting weights.
            optimizer: AdamW and the warm-up + cosine schedule.
            objective: "mmcl" (multimodal contrastive) or "mmcl_ssl" (plus unimodal self-supervised terms).
            ssl_weight: Weight λ2 of the unimodal terms under "mmcl_ssl".
            clip_weight: Weight λ1 of the multimodal term.
        """
        super().__init__(model, optimizer)
        self.objective = objective
        self.ssl_weight = ssl_weight
        self.clip_weight = clip_weight
        self.needs_augmented_views = objective == "mmcl_ssl"

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        scale = self.logit_scale()
        image = self.encode_image(batch["image"])
        text = self.encode_text(batch["text"])
        if self.objective == "mmcl_ssl":
            terms = cleanclip_loss(self.clip_loss, image, text, self.encode_image(batch["image_aug"]),
                                   self.encode_text(batch["text_aug"]), scale, self.clip_weight, self.ssl_weight)
        else:
            clip = self.clip_loss(image, text, scale)
            terms = {"loss": self.clip_weight * clip, "loss_clip": clip}
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss")
        self.log("train/logit_scale", scale)
        return terms["loss"]


class FineTune(CLIPPretraining):
    """FT defense: the multimodal contrastive loss alone, on clean pairs (the baseline below CleanCLIP)."""

    def __init__(self, model: ModelConfig = ModelConfig(), optimizer: OptimizerConfig = OptimizerConfig()):
        """
        Args:
            model: The poisoned model to clean (`pretrained`: a checkpoint, weight file or tag).
            optimizer: AdamW and the warm-up + cosine schedule.
        """
        super().__init__(model, optimizer, objective="mmcl")


class CleanCLIP(CLIPPretraining):
    """CleanCLIP defense: λ1·L_CLIP(I, T) + λ2·[L(I, AutoAugment(I)) + L(T, EDA(T))] on clean pairs."""

    def __init__(self, model: ModelConfig = ModelConfig(), optimizer: OptimizerConfig = OptimizerConfig(),
                 lambda_clip: float = 1.0, lambda_ss: float = 1.0):
        """
        Args:
            model: The poisoned model to clean (`pretrained`: a checkpoint, weight file or tag).
            optimizer: AdamW and the warm-up + cosine schedule.
            lambda_clip: λ1, weight of the multimodal term on un-augmented pairs.
            lambda_ss: λ2, weight of the unimodal self-supervised terms.
        """
        super().__init__(model, optimizer, objective="mmcl_ssl", ssl_weight=lambda_ss, clip_weight=lambda_clip)
