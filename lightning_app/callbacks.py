"""Callbacks: zero-shot CA/ASR at every validation, and the run's `summary.json` at the end of fit."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_only
from torchmetrics.classification import MulticlassAccuracy

from lightning_app.metrics import AttackSuccessRate


class ZeroShotEvaluation(Callback):
    """Logs `val/ca_top1`, `val/ca_top5` and (with a trigger) `val/asr`, synced across ranks.

    Expects the module's `validation_step` to return image features of the clean (and triggered)
    eval images, and with its first batch the zero-shot classifier (built inside the step, where a
    ZeRO-3 engine has the weights gathered); the DataModule exposes `eval_set` and `target`.
    """

    def __init__(self) -> None:
        self.classifier: Optional[torch.Tensor] = None
        self.metrics: dict[str, Any] = {}
        self._seen = 0
        self.initial: Optional[dict[str, float]] = None
        """CA/ASR of the incoming model, from a full sanity check at step 0 (`num_sanity_val_steps: -1`)."""

    def _start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        eval_set = trainer.datamodule.eval_set
        classes = len(eval_set.classnames)
        device = pl_module.device
        self.classifier = None
        self.metrics = {
            "ca_top1": MulticlassAccuracy(classes, top_k=1, average="micro"),
            "ca_top5": MulticlassAccuracy(classes, top_k=min(5, classes), average="micro"),
        }
        if eval_set.trigger is not None:
            self.metrics["asr"] = AttackSuccessRate(eval_set.classnames.index(trainer.datamodule.target))
        self.metrics = {k: m.to(device) for k, m in self.metrics.items()}
        self._seen = 0

    def _batch(self, outputs: dict) -> None:
        if "classifier" in outputs:
            self.classifier = outputs["classifier"]
        assert self.classifier is not None, "the first validation batch carries the classifier"
        labels = outputs["label"]
        self._seen += len(labels)
        logits = 100.0 * outputs["clean"].float() @ self.classifier
        self.metrics["ca_top1"].update(logits, labels)
        self.metrics["ca_top5"].update(logits, labels)
        if "asr" in self.metrics:
            self.metrics["asr"].update(100.0 * outputs["triggered"].float() @ self.classifier, labels)

    def _end(self, trainer: Trainer, pl_module: LightningModule, prefix: str) -> None:
        values = {name: metric.compute() for name, metric in self.metrics.items()}
        for metric in self.metrics.values():
            metric.reset()
        self.classifier = None
        if trainer.sanity_checking:
            # Lightning discards what is logged in the sanity check; keep it when it covered the whole
            # eval set (`num_sanity_val_steps: -1`) of the incoming model (step 0, not a resume).
            if trainer.global_step == 0 and self._seen == len(trainer.datamodule.eval_set):
                self.initial = {name: value.item() for name, value in values.items()}
                for logger in trainer.loggers:
                    logger.log_metrics({f"{prefix}/{k}": v for k, v in self.initial.items()}, step=0)
            return
        for name, value in values.items():
            pl_module.log(f"{prefix}/{name}", value, prog_bar=name in ("ca_top1", "asr"))

    def state_dict(self) -> dict:
        return {"initial": self.initial}

    def load_state_dict(self, state_dict: dict) -> None:
        self.initial = state_dict.get("initial")

    def on_validation_epoch_start(self, trainer, pl_module):
        self._start(trainer, pl_module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch(outputs)

    def on_validation_epoch_end(self, trainer, pl_module):
        self._end(trainer, pl_module, "val")

    def on_test_epoch_start(self, trainer, pl_module):
        self._start(trainer, pl_module)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._batch(outputs)

    def on_test_epoch_end(self, trainer, pl_module):
        self._end(trainer, pl_module, "test")


def _scalar(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) else value


def _poisoned_captions(data) -> str | None:
    """What the poisoned pairs' captions were: "kept" (label-consistent), "templates" or "dataset"."""
    poison = getattr(data, "poison", None)
    if poison is None or not poison.enabled:
        return None
    return "kept" if poison.label_consistent else poison.captions


class RunSummary(Callback):
    """Writes `RUN/summary.json`: final CA/ASR, attack, poison count, steps, wall time, skipped data.

    The wall time is that of the whole run: a resumed run adds the time spent before its checkpoint.
    """

    def __init__(self) -> None:
        self._fit_start = time.perf_counter()
        self._earlier_wall_time = 0.0

    def wall_time(self) -> float:
        return self._earlier_wall_time + time.perf_counter() - self._fit_start

    def state_dict(self) -> dict:
        return {"wall_time_s": self.wall_time()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._earlier_wall_time = state_dict.get("wall_time_s", 0.0)

    def on_fit_start(self, trainer, pl_module):
        self._fit_start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        health = getattr(trainer.datamodule, "data_health", lambda: {})()
        if health:
            skipped = sum(v for k, v in health.items() if k != "good")
            pl_module.log("data/skipped_samples", float(skipped))

    @rank_zero_only
    def on_fit_end(self, trainer, pl_module):
        data = trainer.datamodule
        metrics = {k: _scalar(v) for k, v in trainer.callback_metrics.items()}
        trigger = getattr(data, "trigger", None)
        evaluation = next((c for c in trainer.callbacks if isinstance(c, ZeroShotEvaluation)), None)
        summary = {
            "before": evaluation.initial if evaluation is not None else None,
            "ca_top1": metrics.get("val/ca_top1"),
            "ca_top5": metrics.get("val/ca_top5"),
            "asr": metrics.get("val/asr"),
            "attack": trigger.describe() if trigger is not None else None,
            "target": getattr(data, "target", None),
            "poison_count": getattr(data, "poison_count", None),
            "poisoned_captions": _poisoned_captions(data),
            "module": type(pl_module).__name__,
            "steps": trainer.global_step,
            "epochs": trainer.current_epoch,
            "wall_time_s": round(self.wall_time(), 2),
            "data_health": getattr(data, "data_health", lambda: {})(),
            "metrics": metrics,
            **getattr(pl_module, "summary_extras", dict)(),
        }
        path = Path(trainer.default_root_dir) / "summary.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1, sort_keys=True))
