"""Test-time detection of triggered inputs on a model under audit, which it never changes: a team serving a
model flags suspicious images instead of retraining it.

    python main.py fit --config configs/embedded/detect_inputs.yaml   # summary.json: input_detection

One pass over the run's headline eval set (the first of `data.eval`, a classification set) with the
attack's trigger (`data.trigger_dir`): every readable image clean, and triggered by the trigger (only images
whose class is not the target, the ones the ASR counts). Each detector of
`modules.detection.input_scores` scores both; summary.json's `input_detection` block has, per detector, its
AUROC of triggered against clean, its TPR at 5% FPR, and its milliseconds per image scored (images embedded
included); beside them the images scored and the ASR over them (a detector has nothing to find where the
backdoor does not fire).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader, Subset

from datamodules.poison import poisons_captions
from datamodules.zeroshot import SKIPPED
from modules.core.base import CLIPModule, OptimizerConfig
from modules.core.model_loading import ModelConfig
from modules.core.set_evaluation import attack_targets
from modules.core.summary_columns import SummaryColumns
from modules.detection.input_scores import contrast_scores, description_embeddings, detection_rates, masking_scores

UNRELATED = ["the weather report says light rain tomorrow", "a recipe asks for two cups of flour",
             "the train leaves the station at noon", "someone reads a newspaper on a bench",
             "the meeting moved to next week", "a song plays quietly on the radio",
             "the market closed a little higher", "children play football after school"]
"""Class-free sentences the default malignant descriptions attach to a class prompt (ours; BDetCLIP's authors
had GPT-4 write one per class)."""


@dataclass
class ContrastDetector:
    """BDetCLIP's contrast of benign and malignant class descriptions (`input_scores.contrast_scores`)."""

    descriptions: Optional[str] = None
    """A JSON file `{"benign": {class: [texts]}, "malignant": {class: [texts]}}` (e.g. written by a language
    model, as BDetCLIP's authors do); either part may be left out. None: benign are the set's templates
    with the class name, malignant the same prompts with an unrelated sentence attached."""
    unrelated: list[str] = field(default_factory=lambda: list(UNRELATED))
    """The sentences of the default malignant descriptions (class i takes sentence i mod their number)."""


@dataclass
class MaskingDetector:
    """The largest step of a progressive masking trajectory, after BackdoorIDS (`input_scores.masking_scores`)."""

    grid: int = 4
    """Cells per side of the masking grid."""
    steps: int = 12
    """Cells masked one at a time (the image is embedded steps + 1 times)."""
    seed: int = 0
    """Seed of each image's masking order (drawn from it and the image's index)."""

    def __post_init__(self) -> None:
        if self.grid < 2 or not 1 <= self.steps <= self.grid * self.grid:
            raise ValueError(f"model.masking: grid must be ≥ 2 and steps in [1, grid²], got {self.grid} and {self.steps}")


def _texts_per_class(path: Path, part: str, classnames: list[str]) -> Optional[list[list[str]]]:
    """One list of descriptions per class from part `part` of a descriptions file (None when it has no such part)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exn:
        raise ValueError(f"model.contrast.descriptions: cannot read {path} as JSON: {exn}") from exn
    if part not in content:
        return None
    missing = [name for name in classnames if not content[part].get(name)]
    if missing:
        raise ValueError(f"model.contrast.descriptions: {path} has no {part} descriptions of the classes {missing[:5]}"
                         f"{' …' if len(missing) > 5 else ''} of the eval set")
    return [list(content[part][name]) for name in classnames]


def class_descriptions(config: ContrastDetector, classnames: list[str], templates: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """(benign, malignant) descriptions of each class: from the file where it gives them, else the defaults."""
    path = Path(config.descriptions) if config.descriptions else None
    benign = _texts_per_class(path, "benign", classnames) if path else None
    malignant = _texts_per_class(path, "malignant", classnames) if path else None
    if benign is None:
        benign = [[template.format(name) for template in templates] for name in classnames]
    if malignant is None:
        if not config.unrelated:
            raise ValueError("model.contrast.unrelated is empty: the default malignant descriptions need sentences")
        malignant = [[f"{template.format(name).rstrip('.')}, {config.unrelated[i % len(config.unrelated)]}"
                      for template in templates] for i, name in enumerate(classnames)]
    return benign, malignant


class DetectTriggeredInputs(CLIPModule):
    """Scores the eval set's clean and triggered images with each detector; trains nothing."""

    changes_weights = False
    summary_columns = CLIPModule.summary_columns + (
        SummaryColumns("input_detection", "detect_", nested=True, separator="/", skip=frozenset({"images", "triggered_images", "asr"}),
                       metric_headings={"auroc": "AUROC", "tpr_at_5fpr": "TPR at 5% FPR",
                                        "ms_per_image": "ms per image"}),
    )

    def __init__(self, model: ModelConfig = ModelConfig(), optimizer: OptimizerConfig = OptimizerConfig(),
                 contrast: Optional[ContrastDetector] = ContrastDetector(),
                 masking: Optional[MaskingDetector] = MaskingDetector(), max_images: int = 1000, batch_size: int = 100):
        """
        Args:
            model: The model under audit (not trained).
            optimizer: Unused (no training step); kept so the module shares the base signature.
            contrast: BDetCLIP's contrast detector; None leaves it out.
            masking: The masking-trajectory detector; None leaves it out.
            max_images: Images of the eval set scored (the first ones, in the set's order).
            batch_size: Images per forward pass.
        """
        super().__init__(model, optimizer)
        if contrast is None and masking is None:
            raise ValueError("model.contrast and model.masking are both None: no detector to run")
        if max_images < 2 or batch_size < 1:
            raise ValueError(f"model.max_images must be ≥ 2 and model.batch_size ≥ 1, got {max_images} and {batch_size}")
        self.model.requires_grad_(False)
        self.contrast = contrast
        self.masking = masking
        self.max_images = max_images
        self.batch_size = batch_size
        self.result: dict = {}

    def on_train_start(self) -> None:
        if self.trainer.world_size != 1:
            raise ValueError(f"input detection runs on one device (one pass over the eval set), but trainer.devices × "
                             f"num_nodes gives {self.trainer.world_size} ranks: set trainer.devices 1 and trainer.num_nodes 1")
        eval_set = self.trainer.datamodule.eval_set
        if eval_set.kind != "classification" or eval_set.trigger is None or poisons_captions(eval_set.trigger):
            raise ValueError("input detection scores images with and without an image trigger: the first set of data.eval "
                             "must be a classification set and data.trigger_dir an image-side attack's trigger directory")
        with self.gathered_weights(), torch.no_grad():
            self.model.eval()
            targets = {name.replace("asr", "image_triggered", 1): eval_set.classnames.index(target)
                       for name, target in attack_targets(self.trainer.datamodule).items()}
            self.result = self.detect(eval_set, targets)
        self.trainer.should_stop = True  # the fit loop ends before its first batch

    def detect(self, eval_set, targets: dict[str, int]) -> dict:
        """The detectors' figures on the first `max_images` images of `eval_set`; `targets`: each triggered view
        of a batch (`image_triggered`, or `image_triggered_<part>` per trigger of a multi-trigger attack) and the
        index of its target class, whose images that view leaves out."""
        classifier = self.class_embeddings(eval_set.classnames, eval_set.templates)
        texts = self._description_embeddings(eval_set) if self.contrast is not None else None
        scores = {name: {"clean": [], "triggered": []} for name in ("contrast", "masking") if getattr(self, name) is not None}
        seconds = dict.fromkeys(["embed", *scores], 0.0)
        hits, first = 0, 0
        for batch in DataLoader(Subset(eval_set, range(min(self.max_images, len(eval_set)))), batch_size=self.batch_size):
            readable = batch["label"] != SKIPPED
            index = torch.arange(first, first + len(readable))
            first += len(readable)
            views = [("clean", batch["image"][readable], index[readable], None)]
            for name, target_index in targets.items():
                others = readable & (batch["label"] != target_index)
                views.append(("triggered", batch[name][others], index[others], target_index))
            for side, images, positions, target_index in views:
                if not len(images):
                    continue
                images = images.to(self.device)  # once: the embedding and the masking views both read it
                embedded = self._timed(seconds, "embed", lambda: self.encode_image(images).float())
                if target_index is not None:
                    hits += int(((embedded @ classifier).argmax(1) == target_index).sum())
                for name, score in self._scores(embedded, images, positions, texts, seconds).items():
                    scores[name][side].append(score.cpu())
        clean, triggered = (sum(len(part) for part in next(iter(scores.values()))[side]) for side in ("clean", "triggered"))
        if not clean or not triggered:
            raise ValueError(f"input detection: the first {self.max_images} images of {eval_set.name} give {clean} "
                             f"readable clean and {triggered} triggered non-target images; raise model.max_images")
        out = {"images": clean, "triggered_images": triggered, "asr": hits / triggered}
        for name, sides in scores.items():
            # the contrast detector's cost includes embedding the image; the masking one embeds its own views
            cost = seconds[name] + (seconds["embed"] if name == "contrast" else 0.0)
            out[name] = {**detection_rates(torch.cat(sides["clean"]), torch.cat(sides["triggered"])),
                         "ms_per_image": 1000.0 * cost / (clean + triggered)}
        return out

    def _description_embeddings(self, eval_set) -> tuple[torch.Tensor, torch.Tensor]:
        """(benign, malignant): per class, the normalised mean embedding of its descriptions."""
        texts = class_descriptions(self.contrast, eval_set.classnames, eval_set.templates)
        return tuple(description_embeddings(self.encode_text, self.input_spec().tokenizer, part, self.device) for part in texts)

    def _scores(self, embedded: torch.Tensor, images: torch.Tensor, positions: torch.Tensor, texts, seconds: dict) -> dict:
        """Each detector's scores of one batch of images (and their embeddings), its time added to `seconds`."""
        out = {}
        if self.contrast is not None:
            out["contrast"] = self._timed(seconds, "contrast", lambda: contrast_scores(embedded, *texts))
        if self.masking is not None:
            out["masking"] = self._timed(seconds, "masking", lambda: masking_scores(
                self.encode_image, images, positions, self.masking.grid, self.masking.steps, self.masking.seed))
        return out

    @staticmethod
    def _timed(seconds: dict, name: str, compute):
        start = time.perf_counter()
        value = compute()
        seconds[name] += time.perf_counter() - start
        return value

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        raise AssertionError("input detection stops before its first batch")

    def summary_extras(self) -> dict:
        return {"input_detection": self.result}
