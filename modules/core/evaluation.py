"""The evaluation of a run, once per validation: every set of `data.eval` (zero-shot classification or
retrieval, `modules.core.set_evaluation`), logged and kept for `summary.json`.

The first set is the headline: its figures log as `val/ca_top1`, `val/asr`, … (the ones every table reads);
every other set's as `val/<name>/ca_top1`, `val/<name>/i2t_r5`, …. The zero-shot metrics themselves are in
`modules.core.zeroshot_metrics`, the retrieval ones in `modules.core.retrieval_metrics`.
"""

from __future__ import annotations

import time
from typing import Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from modules.core.set_evaluation import attack_targets, set_evaluation
from modules.core.zeroshot_metrics import AttackSuccessRate, Cohesion, zero_shot_counts, zeroshot_classifier

__all__ = ["AttackSuccessRate", "Cohesion", "Evaluation", "zero_shot_counts", "zeroshot_classifier"]

PROGRESS_BAR = ("ca_top1", "asr")


class Evaluation(Callback):
    """Runs one evaluator per set of the datamodule's `eval_sets` (Lightning's dataloader_idx is the set's
    place), logs their figures synced across ranks, and keeps per set what `summary.json` records (`last`,
    with the pass's seconds on that set) and, from a full sanity check of the incoming model at step 0
    (`num_sanity_val_steps: -1`), the figures before training (`initial`).

    Expects the module's `validation_step` to return image features of the clean (and triggered) eval
    images, the first batch of a classification set with its zero-shot classifier, and a retrieval set's
    batches with their caption features."""

    def __init__(self) -> None:
        self.sets: list = []
        self.names: list[str] = []
        self.initial: Optional[dict[str, float]] = None
        """Figures of the incoming model, keyed as logged without `val/`."""
        self.last: dict[str, dict[str, float]] = {}
        """Per set name: the figures of the latest validation, and `eval_seconds`."""
        self._started = 0.0
        self._ended: dict[int, float] = {}

    def _start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        data = trainer.datamodule
        targets = attack_targets(data)
        self.sets = [set_evaluation(eval_set, targets, pl_module.device) for eval_set in data.eval_sets]
        self.names = [eval_set.name for eval_set in data.eval_sets]
        self._started = time.perf_counter()
        self._ended = {}

    def _batch(self, outputs: dict, dataloader_idx: int = 0) -> None:
        self.sets[dataloader_idx].update(outputs)
        self._ended[dataloader_idx] = time.perf_counter()

    def _seconds(self, index: int) -> float:
        """Time from the previous set's last batch (or the pass's start) to this set's last batch: Lightning
        runs the sets' loaders one after the other."""
        start = max([self._started, *(t for i, t in self._ended.items() if i < index)])
        return self._ended.get(index, start) - start

    def _end(self, trainer: Trainer, pl_module: LightningModule, prefix: str) -> None:
        values: dict[str, torch.Tensor] = {}
        last = {}
        for index, (name, evaluator) in enumerate(zip(self.names, self.sets)):
            figures = evaluator.compute()
            figures["skipped_images"] = torch.tensor(float(evaluator.skipped), device=pl_module.device)
            key = "" if index == 0 else f"{name}/"
            values.update({f"{key}{metric}": value for metric, value in figures.items()})
            last[name] = {"kind": type(evaluator).__name__.removesuffix("Evaluation").lower(),
                          **{metric: value.item() for metric, value in figures.items()},
                          "eval_seconds": round(self._seconds(index), 3)}
        if trainer.sanity_checking:
            # Lightning discards what is logged in the sanity check; keep it when it covered every eval set
            # whole (`num_sanity_val_steps: -1`) of the incoming model (step 0, not a resume).
            whole = all(evaluator.seen == len(eval_set) for evaluator, eval_set
                        in zip(self.sets, trainer.datamodule.eval_sets))
            if trainer.global_step == 0 and whole:
                self.initial = {name: value.item() for name, value in values.items()}
                for logger in trainer.loggers:
                    logger.log_metrics({f"{prefix}/{k}": v for k, v in self.initial.items()}, step=0)
            self.sets = []
            return
        self.last = last
        self.sets = []
        # The metrics' compute() already reduced their counts over every rank, so each rank holds the global
        # value and the mean over ranks that sync_dist takes is that value again; the images this rank could
        # not read are its own, summed. (sync_dist everywhere also answers Lightning's epoch-level warning.)
        for name, value in values.items():
            pl_module.log(f"{prefix}/{name}", value, prog_bar=name in PROGRESS_BAR, add_dataloader_idx=False,
                          reduce_fx="sum" if name.endswith("skipped_images") else "mean", sync_dist=True)

    def state_dict(self) -> dict:
        return {"initial": self.initial}

    def load_state_dict(self, state_dict: dict) -> None:
        self.initial = state_dict.get("initial")

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start(trainer, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch(outputs, dataloader_idx)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module):
        self._start(trainer, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch(outputs, dataloader_idx)

    def on_test_epoch_end(self, trainer, pl_module):
        self._end(trainer, pl_module, "test")
