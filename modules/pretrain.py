"""CLIP (pre)training on image-caption pairs: `python main.py fit --config configs/embedded/badnet.yaml`.

Objectives: "mmcl" (open_clip's ClipLoss) and "mmcl_ssl" (plus CleanCLIP's unimodal
image ↔ augmented-image and text ↔ augmented-text terms, weighted by `ssl_weight`).
"""

from __future__ import annotations

from typing import Literal

import torch

from modules.base import CLIPModule, OptimizerConfig
from modules.losses import ssl_loss
from modules.model_loading import ModelConfig


class CLIPPretraining(CLIPModule):
    def __init__(
        self,
        model: ModelConfig = ModelConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        objective: Literal["mmcl", "mmcl_ssl"] = "mmcl",
        ssl_weight: float = 1.0,
    ):
        """
        Args:
            model: The open_clip model and its starting weights.
            optimizer: AdamW and the warm-up + cosine schedule.
            objective: "mmcl" (multimodal contrastive) or "mmcl_ssl" (plus unimodal self-supervised terms).
            ssl_weight: Weight of the unimodal terms under "mmcl_ssl".
        """
        super().__init__(model, optimizer)
        self.objective = objective
        self.ssl_weight = ssl_weight
        self.needs_augmented_views = objective == "mmcl_ssl"

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        scale = self.logit_scale()
        image = self.encode_image(batch["image"])
        text = self.encode_text(batch["text"])
        loss = self.clip_loss(image, text, scale)
        self.log("train/loss_clip", loss, prog_bar=False)
        if self.objective == "mmcl_ssl":
            extra = ssl_loss(self.clip_loss, image, self.encode_image(batch["image_aug"]), text,
                             self.encode_text(batch["text_aug"]), scale)
            self.log("train/loss_ssl", extra)
            loss = loss + self.ssl_weight * extra
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/logit_scale", scale)
        return loss
