from datamodules.poison.blend_triggers import SIG, Blended, BlendedPattern, WaNet
from datamodules.poison.multi_trigger import MultiTrigger
from datamodules.poison.patch_triggers import BadNet, MaskedPattern, OptimizedPatch
from datamodules.poison.poisoner import Poisoner, poisoned_caption
from datamodules.poison.selection import PoisonConfig, poison_score, select_poison_keys, target_caption_pool
from datamodules.poison.text_triggers import TextPhrase, poisons_captions
from datamodules.poison.trigger_base import Trigger
from datamodules.poison.triggers import load_trigger

__all__ = [
    "SIG",
    "BadNet",
    "Blended",
    "BlendedPattern",
    "MaskedPattern",
    "MultiTrigger",
    "OptimizedPatch",
    "PoisonConfig",
    "Poisoner",
    "TextPhrase",
    "Trigger",
    "WaNet",
    "load_trigger",
    "poison_score",
    "poisoned_caption",
    "poisons_captions",
    "select_poison_keys",
    "target_caption_pool",
]
