"""Zero-shot classification sets in clip_benchmark's webdataset layout, read by random access.

A directory holds `classnames.txt`, `zeroshot_classification_templates.txt` (templates with `{c}`)
and `<split>/nshards.txt` + `<split>/0.tar …` with `KEY.<image ext>` + `KEY.cls` per sample. The tar
headers are indexed once (offsets only), so the set is a map-style dataset that each rank reads a
strided part of, with no padding duplicates that would bias CA or ASR under DDP.

Each item is (clean image, triggered image, label); the triggered image uses the run's trigger with
the sample key, exactly as training would poison it. With a MultiTrigger every image is triggered by
each of its triggers (`image_triggered_<part>`), for per-trigger ASR.
"""

from __future__ import annotations

import logging
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset
from torchvision.transforms import Normalize

from datamodules.poison import MultiTrigger, Trigger
from datamodules.shards import read_text_lines, sample_key
from datamodules.stream_health import IMAGE_EXTENSIONS
from datamodules.transforms import InputSpec, ModelGeometry, decode_image

log = logging.getLogger(__name__)


@dataclass
class ZeroShotEvalConfig:
    """A zero-shot classification set (clip_benchmark webdataset layout) for CA and ASR."""

    directory: str = "data/embedded/eval"
    """Directory with classnames.txt, zeroshot_classification_templates.txt and <split>/N.tar."""
    split: str = "test"
    """Sub-directory of the split to evaluate."""
    batch_size: int = 256
    """Eval batch size per rank."""
    num_workers: int = 0
    """DataLoader workers for evaluation."""
    max_samples: Optional[int] = None
    """Evaluate only the first N samples (for quick checks)."""

    def __post_init__(self) -> None:
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"data.eval.max_samples must be ≥ 1 (or null for the whole set), got {self.max_samples}: "
                             "with no eval samples CA and ASR are not measured")


@dataclass(frozen=True)
class _Member:
    tar: str
    offset: int
    size: int


SKIPPED = -1
"""The label of an eval sample that could not be read: excluded from CA and ASR, counted."""


def _check_label(payload: bytes, num_classes: int, where: str) -> None:
    """A label that parses must name a class; one that does not parse is a corrupt sample, skipped and
    counted when read."""
    try:
        label = int(payload.decode().strip())
    except ValueError:
        return
    if not 0 <= label < num_classes:
        raise ValueError(f"eval label {label} of {where} is not a class index: classnames.txt has {num_classes} "
                         f"classes (0 … {num_classes - 1}); the eval set and its classnames.txt do not match")


def _convert_template(template: str) -> str:
    return template.replace("{c}", "{}")


class ZeroShotSet(Dataset):
    def __init__(self, config: ZeroShotEvalConfig, spec: InputSpec, trigger: Optional[Trigger],
                 rank: int = 0, world_size: int = 1):
        root = Path(config.directory)
        self.classnames = read_text_lines(root / "classnames.txt", "eval classnames")
        self.templates = [_convert_template(t) for t in read_text_lines(
            root / "zeroshot_classification_templates.txt", "eval templates")]
        items = self._index(root / config.split, len(self.classnames))
        if config.max_samples is not None:
            items = items[: config.max_samples]
        self.items = items[rank::world_size]
        self.total = len(items)
        self.trigger = trigger
        self.geometry = ModelGeometry(spec.image_size)
        self.normalize = Normalize(spec.mean, spec.std)
        self._handles: dict[str, object] = {}

    @staticmethod
    def _index(split_dir: Path, num_classes: int) -> list[tuple[str, _Member, _Member]]:
        """The (key, image, label) members of the split's shards; a label outside the classes is an error
        here, naming the shard and key (torchmetrics would reject it only after a whole epoch of training)."""
        nshards = int(read_text_lines(split_dir / "nshards.txt", "eval nshards")[0])
        items = []
        for shard in range(nshards):
            path = split_dir / f"{shard}.tar"
            if not path.exists():
                raise ValueError(f"eval shard {path} listed by nshards.txt does not exist")
            images: dict[str, _Member] = {}
            labels: dict[str, _Member] = {}
            with tarfile.open(path) as tar:
                for m in tar:
                    key, ext = sample_key(m.name)
                    member = _Member(str(path), m.offset_data, m.size)
                    if ext == "cls":
                        labels[key] = member
                        _check_label(tar.extractfile(m).read(), num_classes, f"{path}:{key}")
                    elif ext in IMAGE_EXTENSIONS:
                        images[key] = member
            items += [(key, images[key], labels[key]) for key in sorted(images) if key in labels]
        if not items:
            raise ValueError(f"no (image, .cls) samples found under {split_dir}")
        return items

    def _read(self, member: _Member) -> bytes:
        handle = self._handles.get(member.tar)
        if handle is None:
            handle = self._handles[member.tar] = open(member.tar, "rb")
        handle.seek(member.offset)
        return handle.read(member.size)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        key, image_member, label_member = self.items[index]
        try:
            pixels = self.geometry(decode_image(self._read(image_member))).float() / 255.0
            label = int(self._read(label_member).decode().strip())
        except Exception as exn:  # PIL raises many types for broken files; int() a ValueError
            # skipped and counted by the evaluation (label SKIPPED), like a corrupt training sample
            log.warning("skipping corrupt eval sample %s in %s: %r", key, image_member.tar, exn)
            pixels, label = torch.zeros(3, self.geometry.image_size, self.geometry.image_size), SKIPPED
        item = {"image": self.normalize(pixels), "label": label, "key": key}
        if isinstance(self.trigger, MultiTrigger):
            for name, trigger in zip(self.trigger.part_names(), self.trigger.triggers):
                item[f"image_triggered_{name}"] = self.normalize(trigger.apply(pixels, key))
        elif self.trigger is not None:
            item["image_triggered"] = self.normalize(self.trigger.apply(pixels, key))
        return item

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state
