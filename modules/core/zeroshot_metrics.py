"""Zero-shot classification metrics: the classifier from classnames × templates, the attack success rate,
the collapse of a set of images (`Cohesion`), and per-class counts for the single-run tools
(`lightning_app.per_class`, `lightning_app.tower_swap`).

ASR is the fraction of triggered images *whose true class is not the target* that are classified as
the target. Counting target-class images (as some published scripts do) inflates it by the clean
accuracy on that class; comparing with the true labels (CleanCLIP's public zero-shot path) measures
accuracy on triggered images instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import torch
from torchmetrics import Metric

from datamodules.eval_config import EvalSetConfig
from datamodules.poison import MultiTrigger, load_trigger
from datamodules.zeroshot import SKIPPED, ZeroShotSet


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


@torch.no_grad()
def zero_shot_counts(model: torch.nn.Module, spec, eval_dir: str, trigger_dir: Path, target: str) -> dict:
    """Per class of the eval set: images (`counts`) and clean hits (`correct`); `asr` is the
    AttackSuccessRate metric over the triggered images (its per-class rates and overall rate)."""
    trigger = load_trigger(trigger_dir)
    if isinstance(trigger, MultiTrigger):
        raise ValueError(f"{trigger_dir}: a multi-trigger attack; per-class counts take one trigger: pass the "
                         "directory of one of its triggers (trigger/0, trigger/1, …) with its target")
    data = ZeroShotSet(EvalSetConfig(directory=eval_dir), spec, trigger, 0, 1)
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
