"""Zero-shot evaluation, defined once: the classifier from classnames × templates, clean accuracy, the
attack success rate, the Lightning callback that reports them during a fit, and per-class counts for
the single-run tools (`lightning_app.per_class`, `lightning_app.tower_swap`).

ASR is the fraction of triggered images *whose true class is not the target* that are classified as
the target. Counting target-class images (as some published scripts do) inflates it by the clean
accuracy on that class; comparing with the true labels (CleanCLIP's public zero-shot path) measures
accuracy on triggered images instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from datamodules.poison import MultiTrigger, load_trigger
from datamodules.zeroshot import SKIPPED, ZeroShotEvalConfig, ZeroShotSet


@torch.no_grad()
def zeroshot_classifier(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    device: torch.device,
) -> torch.Tensor:
    """(embed_dim, num_classes): each class is the normalised mean of its normalised template embeddings."""
    columns = []
    for name in classnames:
        tokens = tokenizer([t.format(name) for t in templates]).to(device)
        emb = torch.nn.functional.normalize(encode_text(tokens).float(), dim=-1).mean(dim=0)
        columns.append(torch.nn.functional.normalize(emb, dim=0))
    return torch.stack(columns, dim=1)


class AttackSuccessRate(Metric):
    """Among triggered samples whose true class is not the target, the fraction predicted as the target.

    Fed the logits of *triggered* images. Counts are kept per true class (`num_classes`, or grown to
    the largest label seen), so the per-class table and the overall rate come from the same counts.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, target_index: int, num_classes: Optional[int] = None, **kwargs):
        super().__init__(**kwargs)
        self.target_index = target_index
        size = num_classes or target_index + 1
        self.add_state("class_hits", default=torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("class_total", default=torch.zeros(size, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        size = max(len(self.class_total), int(labels.max()) + 1 if len(labels) else 0, logits.shape[-1])
        if size > len(self.class_total):  # only without num_classes: every rank sees the classes of its batches
            self.class_hits = torch.nn.functional.pad(self.class_hits, (0, size - len(self.class_hits)))
            self.class_total = torch.nn.functional.pad(self.class_total, (0, size - len(self.class_total)))
        hit = logits.argmax(dim=-1) == self.target_index
        self.class_hits += torch.bincount(labels[hit], minlength=size)
        self.class_total += torch.bincount(labels, minlength=size)

    @property
    def _others(self) -> torch.Tensor:
        others = torch.ones_like(self.class_total, dtype=torch.bool)
        others[self.target_index] = False
        return others

    @property
    def hits(self) -> torch.Tensor:
        return self.class_hits[self._others].sum()

    @property
    def total(self) -> torch.Tensor:
        return self.class_total[self._others].sum()

    def compute(self) -> torch.Tensor:
        return self.hits.float() / self.total.clamp(min=1)

    def per_class(self) -> torch.Tensor:
        """The rate per true class (NaN for the target class and for classes never seen)."""
        rates = self.class_hits.float() / self.class_total.clamp(min=1)
        rates[~self._others | (self.class_total == 0)] = float("nan")
        return rates


class Cohesion(Metric):
    """Mean cosine similarity over distinct pairs of the normalised features it is fed (DECREE's collapse
    criterion): near 0 for images spread over the classes, near 1 when a trigger sends them to one point.
    Streams a running sum, since Σ_{i≠j} f_i·f_j = ‖Σ f‖² − Σ ‖f‖²."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.zeros(0), dist_reduce_fx="sum")  # sized by the first batch
        self.add_state("count", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, features: torch.Tensor) -> None:
        features = torch.nn.functional.normalize(features.float(), dim=-1)
        if self.total.numel() == 0:
            self.total = features.new_zeros(features.shape[1])
        self.total += features.sum(0)
        self.count += len(features)

    def compute(self) -> torch.Tensor:
        n = self.count.float()
        if n < 2:
            return torch.tensor(float("nan"), device=self.count.device)
        return (self.total.square().sum() - n) / (n * (n - 1))


class ZeroShotEvaluation(Callback):
    """Logs `val/ca_top1`, `val/ca_top5` and (with a trigger) `val/asr`, synced across ranks. With a
    MultiTrigger, `val/asr_<part>` per trigger toward its own target, and `val/asr` their mean. Also how
    tightly the image tower gathers the eval images (`Cohesion`): `val/cohesion_clean` over the clean
    images, and `val/cohesion_triggered` (`_<part>`) over the triggered images counted by the ASR, the
    collapse a backdoor makes and the `dense` ranking and the oracle finder look for.

    Expects the module's `validation_step` to return image features of the clean (and triggered)
    eval images, and with its first batch the zero-shot classifier (built inside the step, where a
    ZeRO-3 engine has the weights gathered); the DataModule exposes `eval_set` and `target`.
    """

    def __init__(self) -> None:
        self.classifier: Optional[torch.Tensor] = None
        self.metrics: dict[str, Any] = {}
        self._seen = 0
        self.skipped = 0
        """Eval images of this validation that could not be read (excluded from CA and ASR, reported)."""
        self.initial: Optional[dict[str, float]] = None
        """CA/ASR of the incoming model, from a full sanity check at step 0 (`num_sanity_val_steps: -1`)."""

    def _start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        eval_set = trainer.datamodule.eval_set
        classes = len(eval_set.classnames)
        self.classifier = None
        self.metrics = {
            "ca_top1": MulticlassAccuracy(classes, top_k=1, average="micro"),
            "ca_top5": MulticlassAccuracy(classes, top_k=min(5, classes), average="micro"),
        }
        if isinstance(eval_set.trigger, MultiTrigger):
            for name, _, target in eval_set.trigger.parts(trainer.datamodule.target):
                self.metrics[f"asr_{name}"] = AttackSuccessRate(eval_set.classnames.index(target), classes)
        elif eval_set.trigger is not None:
            self.metrics["asr"] = AttackSuccessRate(eval_set.classnames.index(trainer.datamodule.target), classes)
        for name in [n for n in self.metrics if n.startswith("asr")]:
            self.metrics[name.replace("asr", "cohesion_triggered", 1)] = Cohesion()
        self.metrics["cohesion_clean"] = Cohesion()
        self.metrics = {k: m.to(pl_module.device) for k, m in self.metrics.items()}
        self._seen = 0
        self.skipped = 0

    def _batch(self, outputs: dict) -> None:
        if "classifier" in outputs:
            self.classifier = outputs["classifier"]
        assert self.classifier is not None, "the first validation batch carries the classifier"
        labels = outputs["label"]
        self._seen += len(labels)
        readable = labels != SKIPPED
        self.skipped += int((~readable).sum())
        labels = labels[readable]
        logits = 100.0 * outputs["clean"][readable].float() @ self.classifier
        self.metrics["ca_top1"].update(logits, labels)
        self.metrics["ca_top5"].update(logits, labels)
        self.metrics["cohesion_clean"].update(outputs["clean"][readable])
        for name, metric in self.metrics.items():
            if name.startswith("asr"):  # "asr" ← outputs["triggered"], "asr_<part>" ← outputs["triggered_<part>"]
                triggered = outputs[name.replace("asr", "triggered", 1)][readable].float()
                metric.update(100.0 * triggered @ self.classifier, labels)
                others = labels != metric.target_index
                self.metrics[name.replace("asr", "cohesion_triggered", 1)].update(triggered[others])

    def _end(self, trainer: Trainer, pl_module: LightningModule, prefix: str) -> None:
        values = {name: metric.compute() for name, metric in self.metrics.items()}
        for mean in ("asr", "cohesion_triggered"):
            parts = [value for name, value in values.items() if name.startswith(f"{mean}_")]
            if parts:
                values[mean] = torch.stack(parts).mean()
        values["skipped_images"] = torch.tensor(float(self.skipped), device=pl_module.device)
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
        # The metrics' compute() already reduced their counts over every rank, so each rank holds the global
        # value and the mean over ranks that sync_dist takes is that value again; the images this rank could
        # not read are its own, summed. (sync_dist everywhere also answers Lightning's epoch-level warning.)
        for name, value in values.items():
            pl_module.log(f"{prefix}/{name}", value, prog_bar=name in ("ca_top1", "asr"),
                          reduce_fx="sum" if name == "skipped_images" else "mean", sync_dist=True)

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


@torch.no_grad()
def zero_shot_counts(model: torch.nn.Module, spec, eval_dir: str, trigger_dir: Path, target: str) -> dict:
    """Per class of the eval set: images (`counts`) and clean hits (`correct`); `asr` is the
    AttackSuccessRate metric over the triggered images (its per-class rates and overall rate)."""
    trigger = load_trigger(trigger_dir)
    if isinstance(trigger, MultiTrigger):
        raise ValueError(f"{trigger_dir}: a multi-trigger attack; per-class counts take one trigger: pass the "
                         "directory of one of its triggers (trigger/0, trigger/1, …) with its target")
    data = ZeroShotSet(ZeroShotEvalConfig(directory=eval_dir), spec, trigger, 0, 1)
    classifier = zeroshot_classifier(lambda t: model.encode_text(t, normalize=True), spec.tokenizer,
                                     data.classnames, data.templates, "cpu")
    n = len(data.classnames)
    asr = AttackSuccessRate(data.classnames.index(target), n)
    counts, correct = torch.zeros(n), torch.zeros(n)
    for batch in torch.utils.data.DataLoader(data, batch_size=250):
        readable = batch["label"] != SKIPPED
        batch = {k: v[readable] for k, v in batch.items() if isinstance(v, torch.Tensor)}
        labels = batch["label"]
        clean = (model.encode_image(batch["image"], normalize=True) @ classifier).argmax(1)
        counts += torch.bincount(labels, minlength=n)
        correct += torch.bincount(labels[clean == labels], minlength=n)
        asr.update(model.encode_image(batch["image_triggered"], normalize=True) @ classifier, labels)
    return {"classnames": data.classnames, "target_index": asr.target_index, "counts": counts, "correct": correct,
            "asr": asr}
