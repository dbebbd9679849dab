"""LightningModules (pretraining, defenses) and their losses."""

from modules.abd import ABD, CraftAdversarialPatch
from modules.badclip import BadCLIPWeights, OptimizeBadCLIPPatch
from modules.base import CLIPModule, OptimizerConfig
from modules.decree import InvertTrigger
from modules.model_loading import ModelConfig
from modules.oracle_finder import OracleTriggerFinder
from modules.pretrain import CleanCLIP, CLIPPretraining, FineTune
from modules.repair import TriggerRepair
from modules.roclip import RoCLIP
from modules.safeclip import SafeCLIP
from modules.ubt import SuspiciousPairDiscovery
from modules.ubt_unlearn import TokenUnlearning

__all__ = ["ABD", "BadCLIPWeights", "OptimizeBadCLIPPatch", "CLIPModule", "CLIPPretraining", "CleanCLIP", "CraftAdversarialPatch", "FineTune", "InvertTrigger",
           "ModelConfig",
           "OptimizerConfig", "OracleTriggerFinder", "RoCLIP", "SafeCLIP", "SuspiciousPairDiscovery", "TokenUnlearning",
           "TriggerRepair"]
