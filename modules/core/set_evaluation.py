"""What is measured on one evaluation set in one validation pass: a zero-shot classification set's CA,
ASR and cohesion (`ClassificationEvaluation`), or a retrieval set's recall@k and retrieval ASR
(`RetrievalEvaluation`). `modules.core.evaluation.Evaluation` runs one per set of `data.eval`.

Both are fed what `CLIPModule.validation_step` returns for a batch of their set, and both leave out (and
count) the images their set could not read.
"""

from __future__ import annotations

import torch
from torchmetrics.classification import MulticlassAccuracy

from datamodules.poison import poisons_captions
from datamodules.poison.selection import names_target
from datamodules.zeroshot import SKIPPED
from modules.core.retrieval_metrics import RetrievalRecall
from modules.core.zeroshot_metrics import AttackSuccessRate, Cohesion


def _mean_of_parts(values: dict[str, torch.Tensor], parts: list[str], mean: str) -> None:
    """With a MultiTrigger (parts named `asr_<part>`), `mean` is the mean of the parts' figures."""
    if parts and mean not in values:
        values[mean] = torch.stack([values[name] for name in parts]).mean()


class ClassificationEvaluation:
    """CA top-1/top-5 of the clean images, ASR per trigger toward its target (`asr`, or `asr_<part>` and their
    mean), and how tightly the image tower gathers the clean images (`cohesion_clean`) and the triggered
    images the ASR counts (`cohesion_triggered`), the collapse the `dense` ranking and the oracle finder
    look for. The classifier arrives with the set's first batch (built inside the step, where a ZeRO-3
    engine has the text tower's weights gathered)."""

    def __init__(self, eval_set, targets: dict[str, str], device: torch.device):
        classes = len(eval_set.classnames)
        self.classifier: torch.Tensor | None = None
        self.seen = 0
        self.skipped = 0
        metrics = {
            "ca_top1": MulticlassAccuracy(classes, top_k=1, average="micro"),
            "ca_top5": MulticlassAccuracy(classes, top_k=min(5, classes), average="micro"),
        }
        for name, target in targets.items():
            if target not in eval_set.classnames:  # not the headline set (checked at setup): no ASR here
                continue
            metrics[name] = AttackSuccessRate(eval_set.classnames.index(target), classes)
            metrics[name.replace("asr", "cohesion_triggered", 1)] = Cohesion()
        metrics["cohesion_clean"] = Cohesion()
        self.metrics = {name: metric.to(device) for name, metric in metrics.items()}

    def update(self, outputs: dict) -> None:
        if "classifier" in outputs:
            self.classifier = outputs["classifier"]
        assert self.classifier is not None, "the set's first validation batch carries its classifier"
        labels = outputs["label"]
        self.seen += len(labels)
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

    def compute(self) -> dict[str, torch.Tensor]:
        values = {name: metric.compute() for name, metric in self.metrics.items()}
        parts = [name for name in self.metrics if name.startswith("asr")]
        _mean_of_parts(values, parts, "asr")
        _mean_of_parts(values, [name.replace("asr", "cohesion_triggered", 1) for name in parts], "cohesion_triggered")
        return values


class RetrievalEvaluation:
    """Recall@1/5/10 image→text (`i2t_r<k>`) and text→image (`t2i_r<k>`), and per trigger the retrieval ASR
    (`asr_hit<k>`, or `asr_<part>_hit<k>` and their mean): triggered images whose captions do not name the
    target that retrieve a caption naming it, or, for a text-side trigger, captions of other content that
    carry its phrase and retrieve an image of the target (`modules.core.retrieval_metrics`)."""

    def __init__(self, eval_set, targets: dict[str, str], device: torch.device):
        self.targets = targets
        self.side = "text" if poisons_captions(eval_set.trigger) else "image"
        self.metric = RetrievalRecall(asr=list(targets), side=self.side).to(device)
        self.seen = 0
        self.skipped = 0

    def update(self, outputs: dict) -> None:
        position = outputs["position"]
        self.seen += len(position)
        readable = position >= 0
        self.skipped += int((~readable).sum())
        device = position.device
        names = {name: torch.tensor([names_target(caption, target) for caption in outputs["captions"]],
                                    dtype=torch.bool, device=device) for name, target in self.targets.items()}
        triggered = {name: outputs["text_triggered"] if self.side == "text" else
                     outputs[name.replace("asr", "triggered", 1)][readable] for name in self.targets}
        self.metric.update(outputs["clean"][readable], position[readable], outputs["text"], outputs["text_position"],
                           triggered, names)

    def compute(self) -> dict[str, torch.Tensor]:
        values = self.metric.compute()
        for k in self.metric.ks:
            _mean_of_parts(values, [f"{name}_hit{k}" for name in self.targets], f"asr_hit{k}")
        return values


def attack_targets(datamodule) -> dict[str, str]:
    """The ASR names of the run's trigger and each one's target class: {"asr": target}, with a MultiTrigger
    {"asr_<part>": its target}, and {} without a trigger."""
    from datamodules.poison import MultiTrigger

    trigger = datamodule.eval_set.trigger
    if isinstance(trigger, MultiTrigger):
        return {f"asr_{name}": target for name, _, target in trigger.parts(datamodule.target)}
    return {"asr": datamodule.target} if trigger is not None else {}


def set_evaluation(eval_set, targets: dict[str, str], device: torch.device):
    if eval_set.kind == "classification":
        # a text-side trigger leaves images as they are: it has no zero-shot classification ASR to measure
        return ClassificationEvaluation(eval_set, {} if poisons_captions(eval_set.trigger) else targets, device)
    return RetrievalEvaluation(eval_set, targets, device)
