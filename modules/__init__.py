"""LightningModules (pretraining, defenses) and their losses."""

from modules.base import CLIPModule, OptimizerConfig
from modules.model_loading import ModelConfig
from modules.pretrain import CleanCLIP, CLIPPretraining, FineTune

__all__ = ["CLIPModule", "CLIPPretraining", "CleanCLIP", "FineTune", "ModelConfig", "OptimizerConfig"]
