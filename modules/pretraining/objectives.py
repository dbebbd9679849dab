"""Contrastive CLIP training: pretraining (`configs/embedded/badnet.yaml`) and the fine-tuning
defenses that differ from it only in data and loss weights: FT (multimodal loss on clean pairs) and
CleanCLIP (`L = λ1·L_CLIP + λ2·L_SS` on clean pairs, Bansal et al. 2023).

Pretraining objectives (`model.init_args.objective`, the axis of Verma et al.): `mmcl` (CLIP's
multimodal contrastive loss), `mmcl_ssl` (plus CleanCLIP's unimodal terms), `siglip` (pairwise
sigmoid loss with a learned logit bias, Zhai et al.) and `cyclip` (MMCL plus cyclic consistency).

    python main.py fit --config configs/embedded/badnet.yaml
    python main.py fit --config configs/embedded/cleanclip.yaml
"""

from __future__ import annotations

from typing import Literal

import torch

from modules.core.base import CLIPModule, OptimizerConfig
from modules.core.losses import SIGLIP_INIT_LOGIT_BIAS, cleanclip_loss, cyclic_terms, make_siglip_loss
from modules.core.model_loading import ModelConfig


class CLIPPretraining(CLIPModule):
    def __init__(
        self,
        model: ModelConfig = ModelConfig(),
        optimizer: OptimizerConfig = OptimizerConfig(),
        objective: Literal["mmcl", "mmcl_ssl", "siglip", "cyclip"] = "mmcl",
        ssl_weight: float = 1.0,
        clip_weight: float = 1.0,
        cyclic_cross_weight: float = 0.25,
        cyclic_in_weight: float = 0.25,
    ):
        """
        Args:
            model: The open_clip model and its starting weights.
            optimizer: AdamW and the warm-up + cosine schedule.
            objective: "mmcl" (multimodal contrastive), "mmcl_ssl" (plus unimodal self-supervised terms),
                "siglip" (sigmoid loss; the model gains a logit bias) or "cyclip" (MMCL plus cyclic consistency).
            ssl_weight: Weight λ2 of the unimodal terms under "mmcl_ssl".
            clip_weight: Weight λ1 of the multimodal term.
            cyclic_cross_weight: Weight of CyCLIP's cross-modal consistency term (CyCLIP: 0.25).
            cyclic_in_weight: Weight of CyCLIP's in-modal consistency term (CyCLIP: 0.25).
        """
        super().__init__(model, optimizer)
        self.objective = objective
        self.ssl_weight = ssl_weight
        self.clip_weight = clip_weight
        self.cyclic_cross_weight = cyclic_cross_weight
        self.cyclic_in_weight = cyclic_in_weight
        self.needs_augmented_views = objective == "mmcl_ssl"
        if objective == "siglip" and getattr(self.model, "logit_bias", None) is None:
            self.model.logit_bias = torch.nn.Parameter(torch.full((1,), SIGLIP_INIT_LOGIT_BIAS))
        self.siglip_loss = make_siglip_loss() if objective == "siglip" else None

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.objective == "siglip":
            self.siglip_loss = make_siglip_loss(self.global_rank, self.trainer.world_size)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        scale = self.logit_scale()
        image = self.encode_image(batch["image"])
        text = self.encode_text(batch["text"])
        if self.objective == "mmcl_ssl":
            terms = cleanclip_loss(self.clip_loss, image, text, self.encode_image(batch["image_aug"]),
                                   self.encode_text(batch["text_aug"]), scale, self.clip_weight, self.ssl_weight)
        elif self.objective == "siglip":
            siglip = self.siglip_loss(image, text, scale, self.model.logit_bias)
            terms = {"loss": self.clip_weight * siglip, "loss_siglip": siglip}
            self.log("train/logit_bias", self.model.logit_bias.detach().squeeze())
        elif self.objective == "cyclip":
            clip = self.clip_loss(image, text, scale)
            cyclic = cyclic_terms(image, text, self.global_rank, self.trainer.world_size)
            terms = {"loss": self.clip_weight * clip + self.cyclic_cross_weight * cyclic["loss_cyclic_cross"]
                     + self.cyclic_in_weight * cyclic["loss_cyclic_in"], "loss_clip": clip, **cyclic}
        else:
            clip = self.clip_loss(image, text, scale)
            terms = {"loss": self.clip_weight * clip, "loss_clip": clip}
        for name, value in terms.items():
            self.log(f"train/{name}", value, prog_bar=name == "loss")
        self.log("train/logit_scale", scale)
        return terms["loss"]
