"""Data: WebDataset streaming, zero-shot eval sets, poisoning and triggers, the embedded benchmark."""

from datamodules.embedded.benchmark import EmbeddedBenchmark
from datamodules.eval_config import EvalSetConfig
from datamodules.poison import (
    SIG,
    BadNet,
    Blended,
    BlendedPattern,
    MultiTrigger,
    OptimizedPatch,
    PoisonConfig,
    TextPhrase,
    Trigger,
    WaNet,
)
from datamodules.pretrain import ShardDataModule

__all__ = [
    "EvalSetConfig",
    "SIG",
    "BadNet",
    "Blended",
    "BlendedPattern",
    "MultiTrigger",
    "OptimizedPatch",
    "EmbeddedBenchmark",
    "PoisonConfig",
    "ShardDataModule",
    "TextPhrase",
    "Trigger",
    "WaNet",
]
