"""Data: WebDataset streaming, zero-shot eval sets, poisoning and triggers, the embedded benchmark."""

from datamodules.embedded.benchmark import EmbeddedBenchmark
from datamodules.poison import (
    SIG,
    BadNet,
    Blended,
    BlendedPattern,
    MultiTrigger,
    OptimizedPatch,
    PoisonConfig,
    Trigger,
    WaNet,
)
from datamodules.pretrain import ShardDataModule
from datamodules.zeroshot import ZeroShotEvalConfig

__all__ = [
    "SIG",
    "BadNet",
    "Blended",
    "BlendedPattern",
    "MultiTrigger",
    "OptimizedPatch",
    "EmbeddedBenchmark",
    "PoisonConfig",
    "ShardDataModule",
    "Trigger",
    "WaNet",
    "ZeroShotEvalConfig",
]
