"""The fine-tuning defenses that differ from pretraining only in data and loss weights: FT (the multimodal
loss on clean pairs) and CleanCLIP (`L = λ1·L_CLIP + λ2·L_SS` on clean pairs, Bansal et al. 2023).

    python main.py fit --config configs/embedded/cleanclip.yaml
"""

from __future__ import annotations

from modules.core.base import OptimizerConfig
from modules.core.model_loading import ModelConfig
from modules.pretraining.objectives import CLIPPretraining


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
