"""Zero-shot classification sets in clip_benchmark's webdataset layout, read by random access.

A directory holds `classnames.txt`, `zeroshot_classification_templates.txt` (templates with `{c}`)
and `<split>/nshards.txt` + `<split>/0.tar …` with `KEY.<image ext>` + `KEY.cls` per sample
(`datamodules.eval_shards` reads them). A set may take another set's classnames and templates
(`EvalSetConfig.classnames`, `.templates`): ImageNet's variants share ImageNet's.

Each item is (clean image, triggered image, label); the triggered image uses the run's trigger with
the sample key, exactly as training would poison it. With a MultiTrigger every image is triggered by
each of its triggers (`image_triggered_<part>`), for per-trigger ASR.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from datamodules.eval_config import EvalSetConfig
from datamodules.eval_shards import EvalShardSet, index_split
from datamodules.poison import Trigger
from datamodules.shards import read_text_lines
from datamodules.transforms import InputSpec

log = logging.getLogger(__name__)

SKIPPED = -1
"""The label of an eval sample that could not be read: excluded from CA and ASR, counted."""


def _label_checker(num_classes: int):
    """A label that parses must name a class (an error here, naming the shard and key: torchmetrics would
    reject it only after a whole epoch of training); one that does not parse is a corrupt sample, skipped
    and counted when read."""
    def check(payload: bytes, where: str) -> None:
        try:
            label = int(payload.decode().strip())
        except ValueError:
            return
        if not 0 <= label < num_classes:
            raise ValueError(f"eval label {label} of {where} is not a class index: classnames.txt has {num_classes} "
                             f"classes (0 … {num_classes - 1}); the eval set and its classnames.txt do not match")
    return check


def _convert_template(template: str) -> str:
    return template.replace("{c}", "{}")


class ZeroShotSet(EvalShardSet):
    kind = "classification"

    def __init__(self, config: EvalSetConfig, spec: InputSpec, trigger: Optional[Trigger],
                 rank: int = 0, world_size: int = 1):
        self.classnames = read_text_lines(config.classnames_file(), "eval classnames")
        self.templates = [_convert_template(t) for t in read_text_lines(config.templates_file(), "eval templates")]
        items = index_split(Path(config.directory) / config.split, "cls", _label_checker(len(self.classnames)))
        super().__init__(config, spec, trigger, items, rank, world_size)

    def __getitem__(self, index: int) -> dict:
        key, image_member, label_member = self.items[index]
        try:
            pixels = self.pixels(image_member)
            label = int(self.read(label_member).decode().strip())
        except Exception as exn:  # PIL raises many types for broken files; int() a ValueError
            # skipped and counted by the evaluation (label SKIPPED), like a corrupt training sample
            log.warning("skipping corrupt eval sample %s in %s: %r", key, image_member.tar, exn)
            pixels, label = self.blank(), SKIPPED
        return {**self.views(pixels, key), "label": label, "key": key}
