"""The poisoning step of the data stream: trigger on the image, target-naming caption."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Optional

import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from datamodules.poison.selection import PoisonConfig
from datamodules.poison.triggers import Trigger


def poisoned_caption(key: str, target: str, seed: int, pool: Sequence[str] = ()) -> str:
    """A caption chosen by (seed, key): from `pool` (training captions naming the target) when given,
    else one of the 80 ImageNet templates filled with the target name."""
    digest = hashlib.sha256(f"caption/{seed}/{key}".encode()).digest()
    index = int.from_bytes(digest[:4], "little")
    if pool:
        return pool[index % len(pool)]
    return OPENAI_IMAGENET_TEMPLATES[index % len(OPENAI_IMAGENET_TEMPLATES)](target)


class Poisoner:
    """Applies the trigger (and the target caption) to the samples whose key is in the poison set."""

    def __init__(self, trigger: Optional[Trigger], keys: Iterable[str], config: PoisonConfig,
                 caption_pool: Sequence[str] = ()):
        self.keys = frozenset(keys)
        if self.keys and trigger is None:
            raise ValueError("poisoning is enabled but no trigger is configured (data.trigger)")
        if self.keys and config.captions == "dataset" and not config.label_consistent and not caption_pool:
            raise ValueError("poison.captions is 'dataset' but the manifest has no caption pool")
        self.trigger = trigger
        self.config = config
        self.caption_pool = tuple(caption_pool)

    def __call__(self, key: str, image: torch.Tensor, caption: str) -> tuple[torch.Tensor, str, bool]:
        if key not in self.keys:
            return image, caption, False
        image = self.trigger.apply(image, key)
        if not self.config.label_consistent:
            caption = poisoned_caption(key, self.config.target, self.config.seed, self.caption_pool)
        return image, caption, True
