"""Random access to a clip_benchmark webdataset split, shared by the classification and retrieval sets.

The tar headers are indexed once (offsets only), so a set is a map-style dataset each rank reads a strided
part of, with no padding duplicates that would bias a metric under DDP. Every eval item also carries the
image as the run's trigger would poison it, keyed by the sample key exactly as training poisons it.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import Dataset
from torchvision.transforms import Normalize

from datamodules.eval_config import EvalSetConfig
from datamodules.poison import MultiTrigger, Trigger, poisons_captions
from datamodules.shards import read_text_lines, sample_key
from datamodules.stream_health import IMAGE_EXTENSIONS
from datamodules.transforms import InputSpec, ModelGeometry, decode_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    tar: str
    offset: int
    size: int


def index_split(split_dir: Path, companion: str,
                check: Optional[Callable[[bytes, str], None]] = None) -> list[tuple[str, Member, Member]]:
    """The (key, image, companion) members of a split's shards, in key order per shard; `companion` is the
    extension read beside each image (`cls` for a label, `txt` for captions), checked by `check`."""
    nshards = int(read_text_lines(split_dir / "nshards.txt", "eval nshards")[0])
    items = []
    for shard in range(nshards):
        path = split_dir / f"{shard}.tar"
        if not path.exists():
            raise ValueError(f"eval shard {path} listed by nshards.txt does not exist")
        images: dict[str, Member] = {}
        others: dict[str, Member] = {}
        with tarfile.open(path) as tar:
            for m in tar:
                key, ext = sample_key(m.name)
                member = Member(str(path), m.offset_data, m.size)
                if ext == companion:
                    others[key] = member
                    if check is not None:
                        check(tar.extractfile(m).read(), f"{path}:{key}")
                elif ext in IMAGE_EXTENSIONS:
                    images[key] = member
        items += [(key, images[key], others[key]) for key in sorted(images) if key in others]
    if not items:
        raise ValueError(f"no (image, .{companion}) samples found under {split_dir}")
    return items


class EvalShardSet(Dataset):
    """The part of a split this rank evaluates, read by random access, with triggered views of each image."""

    def __init__(self, config: EvalSetConfig, spec: InputSpec, trigger: Optional[Trigger],
                 items: list[tuple[str, Member, Member]], rank: int, world_size: int):
        self.name = config.set_name
        if config.max_samples is not None:
            items = items[: config.max_samples]
        self.total = len(items)
        self.positions = list(range(self.total))[rank::world_size]
        """Each item's place in the whole set (the same on every rank), for metrics that pair items."""
        self.items = items[rank::world_size]
        self.trigger = trigger
        self.geometry = ModelGeometry(spec.image_size)
        self.normalize = Normalize(spec.mean, spec.std)
        self._handles: dict[str, object] = {}

    def read(self, member: Member) -> bytes:
        handle = self._handles.get(member.tar)
        if handle is None:
            handle = self._handles[member.tar] = open(member.tar, "rb")
        handle.seek(member.offset)
        return handle.read(member.size)

    def pixels(self, member: Member) -> torch.Tensor:
        return self.geometry(decode_image(self.read(member))).float() / 255.0

    def blank(self) -> torch.Tensor:
        return torch.zeros(3, self.geometry.image_size, self.geometry.image_size)

    def views(self, pixels: torch.Tensor, key: str) -> dict[str, torch.Tensor]:
        """The clean image and its triggered views: `image_triggered`, or with a MultiTrigger one
        `image_triggered_<part>` per trigger, for per-trigger ASR."""
        out = {"image": self.normalize(pixels)}
        if poisons_captions(self.trigger):  # text-side: the trigger is in the captions (`RetrievalSet.collate`)
            return out
        if isinstance(self.trigger, MultiTrigger):
            for name, trigger in zip(self.trigger.part_names(), self.trigger.triggers):
                out[f"image_triggered_{name}"] = self.normalize(trigger.apply(pixels, key))
        elif self.trigger is not None:
            out["image_triggered"] = self.normalize(self.trigger.apply(pixels, key))
        return out

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state
