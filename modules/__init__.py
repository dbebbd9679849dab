"""LightningModules (pretraining, attacks, defenses, detectors) and their losses, by role:

- `core/`: the base module every other one extends (model loading, optimizer, zero-shot evaluation),
  losses as pure functions over embeddings, checkpoints, freezing;
- `pretraining/`: CLIP's objectives (MMCL, SSL, SigLIP, CyCLIP), RoCLIP, SafeCLIP;
- `attacks/`: BadCLIP's optimized patch and poisoned weights;
- `cleaning/`: FT, CleanCLIP, PAR, ABD, trigger repair, token unlearning (UBT's stage 2);
- `detection/`: pair scoring and UBT's discovery, detectors and the suspicious set, DECREE, the
  segmentation-oracle finder, the test-time detectors of triggered inputs.

Every class is re-exported here, so a config names it `class_path: modules.CleanCLIP` wherever it lives.
"""

from modules.attacks.badclip import BadCLIPWeights, OptimizeBadCLIPPatch
from modules.cleaning.abd import ABD, CraftAdversarialPatch
from modules.cleaning.finetune import CleanCLIP, FineTune
from modules.cleaning.par import PerturbAndRecover
from modules.cleaning.repair import TriggerRepair
from modules.cleaning.token_unlearning import TokenUnlearning
from modules.core.base import CLIPModule, OptimizerConfig
from modules.core.model_loading import ModelConfig
from modules.detection.decree import InvertTrigger
from modules.detection.discovery import SuspiciousPairDiscovery
from modules.detection.input_detection import ContrastDetector, DetectTriggeredInputs, MaskingDetector
from modules.detection.oracle_finder import OracleTriggerFinder
from modules.detection.segmentation import Felzenszwalb, SegmentationOracle
from modules.pretraining.objectives import CLIPPretraining
from modules.pretraining.roclip import RoCLIP
from modules.pretraining.safeclip import SafeCLIP

__all__ = ["ABD", "BadCLIPWeights", "CLIPModule", "CLIPPretraining", "CleanCLIP", "ContrastDetector", "CraftAdversarialPatch", "DetectTriggeredInputs",
           "Felzenszwalb", "FineTune",
           "InvertTrigger", "MaskingDetector", "ModelConfig", "OptimizeBadCLIPPatch", "OptimizerConfig", "OracleTriggerFinder", "PerturbAndRecover", "RoCLIP",
           "SafeCLIP", "SegmentationOracle", "SuspiciousPairDiscovery", "TokenUnlearning", "TriggerRepair"]
