"""The run's evaluation sets, built from `data.eval` (`datamodules.eval_config`): a classification set
(`ZeroShotSet`) or a retrieval set (`RetrievalSet`) per entry, the first the headline."""

from __future__ import annotations

import os
from typing import Optional, Union

from torch.utils.data import DataLoader

from datamodules.eval_config import EvalSetConfig
from datamodules.loaders import RankLocalSampler
from datamodules.poison import Trigger
from datamodules.retrieval import RetrievalSet
from datamodules.transforms import InputSpec
from datamodules.worker_watch import ExitWithProcess
from datamodules.zeroshot import ZeroShotSet

EvalSet = Union[ZeroShotSet, RetrievalSet]


def build_eval_set(config: EvalSetConfig, spec: InputSpec, trigger: Optional[Trigger],
                   rank: int = 0, world_size: int = 1) -> EvalSet:
    kind = config.resolved_kind()
    if kind == "retrieval":
        return RetrievalSet(config, spec, trigger, rank, world_size)
    return ZeroShotSet(config, spec, trigger, rank, world_size)


def eval_loader(eval_set: EvalSet, config: EvalSetConfig, multiprocessing_context: Optional[str]) -> DataLoader:
    """The loader of one set: this rank's share in order, batched by the set's own collate (a retrieval
    set's flattens its captions)."""
    return DataLoader(
        eval_set,
        batch_size=config.batch_size,
        sampler=RankLocalSampler(len(eval_set)),
        num_workers=config.num_workers,
        collate_fn=getattr(eval_set, "collate", None),
        multiprocessing_context=multiprocessing_context,
        worker_init_fn=ExitWithProcess(os.getpid()),
    )
