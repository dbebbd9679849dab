from datamodules.poison.poisoner import Poisoner, poisoned_caption
from datamodules.poison.selection import PoisonConfig, poison_score, select_poison_keys, target_caption_pool
from datamodules.poison.triggers import (
    SIG,
    BadNet,
    Blended,
    BlendedPattern,
    MaskedPattern,
    MultiTrigger,
    OptimizedPatch,
    Trigger,
    WaNet,
    load_trigger,
)

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
    "Trigger",
    "WaNet",
    "load_trigger",
    "poison_score",
    "poisoned_caption",
    "select_poison_keys",
    "target_caption_pool",
]
