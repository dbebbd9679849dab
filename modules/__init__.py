"""LightningModules (pretraining, defenses) and their losses."""

from modules.base import CLIPModule, OptimizerConfig
from modules.model_loading import ModelConfig
from modules.pretrain import CLIPPretraining

__all__ = ["CLIPModule", "CLIPPretraining", "ModelConfig", "OptimizerConfig"]
