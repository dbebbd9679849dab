"""The poisoning step of the data stream: trigger on the image and a target-naming caption, or, for a
text-side trigger, the image kept and the trigger phrase in its (target-naming) caption."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Optional

import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from datamodules.poison.multi_trigger import MultiTrigger
from datamodules.poison.selection import PoisonConfig
from datamodules.poison.text_triggers import poisons_captions
from datamodules.poison.trigger_base import Trigger


def poisoned_caption(key: str, target: str, seed: int, pool: Sequence[str] = ()) -> str:
    """A caption chosen by (seed, key): from `pool` (training captions naming the target) when given,
    else one of the 80 ImageNet templates filled with the target name."""
    digest = hashlib.sha256(f"caption/{seed}/{key}".encode()).digest()
    index = int.from_bytes(digest[:4], "little")
    if pool:
        return pool[index % len(pool)]
    return OPENAI_IMAGENET_TEMPLATES[index % len(OPENAI_IMAGENET_TEMPLATES)](target)


def poison_targets(trigger: Optional[Trigger], config: PoisonConfig) -> list[str]:
    """Every class a poisoned caption can name: the poison target, or a MultiTrigger's own targets."""
    if isinstance(trigger, MultiTrigger) and trigger.targets is not None:
        return sorted(set(trigger.targets))
    return [config.target]


def key_target(trigger: Optional[Trigger], key: str, config: PoisonConfig) -> str:
    """The target a poisoned key's caption names."""
    if isinstance(trigger, MultiTrigger):
        return trigger.target_of(trigger.index(key), config.target)
    return config.target


class Poisoner:
    """Applies the trigger (and the target caption) to the samples whose key is in the poison set.

    `caption_pools` maps each target to the training captions naming it (poison.captions "dataset")."""

    def __init__(self, trigger: Optional[Trigger], keys: Iterable[str], config: PoisonConfig,
                 caption_pools: Optional[dict[str, Sequence[str]]] = None):
        self.keys = frozenset(keys)
        caption_pools = caption_pools or {}
        if self.keys and trigger is None:
            raise ValueError("poisoning is enabled but no trigger is configured (data.trigger)")
        if self.keys and config.captions == "dataset" and not config.label_consistent:
            missing = [t for t in poison_targets(trigger, config) if not caption_pools.get(t)]
            if missing:
                raise ValueError(f"poison.captions is 'dataset' but the manifest has no caption pool for {missing}")
        self.trigger = trigger
        self.config = config
        self.caption_pools = {target: tuple(pool) for target, pool in caption_pools.items()}

    def __call__(self, key: str, image: torch.Tensor, caption: str) -> tuple[torch.Tensor, str, bool]:
        if key not in self.keys:
            return image, caption, False
        if poisons_captions(self.trigger):  # text-side: the image stays, the (target-naming) caption gets the phrase
            return image, self.trigger.apply_text(caption, key), True
        image = self.trigger.apply(image, key)
        if not self.config.label_consistent:
            target = key_target(self.trigger, key, self.config)
            caption = poisoned_caption(key, target, self.config.seed, self.caption_pools.get(target, ()))
        return image, caption, True
