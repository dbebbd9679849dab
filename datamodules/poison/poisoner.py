"""The poisoning step of the data stream: trigger on the image, target-naming caption."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Optional

import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from datamodules.poison.selection import PoisonConfig
from datamodules.poison.triggers import Trigger


def poisoned_caption(key: str, target: str, seed: int) -> str:
    """One of the 80 ImageNet templates, chosen by (seed, key), filled with the target name."""
    digest = hashlib.sha256(f"caption/{seed}/{key}".encode()).digest()
    template = OPENAI_IMAGENET_TEMPLATES[int.from_bytes(digest[:4], "little") % len(OPENAI_IMAGENET_TEMPLATES)]
    return template(target)


class Poisoner:
    """Applies the trigger (and the target caption) to the samples whose key is in the poison set."""

    def __init__(self, trigger: Optional[Trigger], keys: Iterable[str], config: PoisonConfig):
        self.keys = frozenset(keys)
        if self.keys and trigger is None:
            raise ValueError("poisoning is enabled but no trigger is configured (data.trigger)")
        self.trigger = trigger
        self.config = config

    def __call__(self, key: str, image: torch.Tensor, caption: str) -> tuple[torch.Tensor, str, bool]:
        if key not in self.keys:
            return image, caption, False
        image = self.trigger.apply(image, key)
        if not self.config.label_consistent:
            caption = poisoned_caption(key, self.config.target, self.config.seed)
        return image, caption, True
