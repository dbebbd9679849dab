"""The poison manifest: which training pairs are poisoned, with what caption pool and (for a multi-trigger
attack) which trigger and target each got, from one pass over the shards' captions. A pure function of
the shards, the trigger and the poison config (and a data-level defense's exclusion), so that every
rank, every resume and every defense that replays the poisoning agree on it."""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Optional

from datamodules.exclusion import ExcludeConfig
from datamodules.poison.multi_trigger import MultiTrigger
from datamodules.poison.poisoner import key_target, poison_targets
from datamodules.poison.selection import PoisonConfig, names_target, select_poison_keys, target_caption_pool
from datamodules.poison.text_triggers import poisons_captions
from datamodules.poison.trigger_base import Trigger
from datamodules.shards import scan_captions

log = logging.getLogger(__name__)


def poison_manifest(urls: list[str], trigger: Optional[Trigger], poison: PoisonConfig,
                    exclude: Optional[ExcludeConfig] = None) -> dict:
    """The manifest of the shards at `urls` (each scanned once; a lost shard is listed, not poisoned)."""
    start = time.perf_counter()
    wants_pool = poison.enabled and poison.captions == "dataset" and not poison.label_consistent
    targets = poison_targets(trigger, poison)
    target_captions: dict[str, set[str]] = {target: set() for target in targets}
    lost: list[dict] = []

    def scanned_pairs():  # one pass over the shards feeds both the selection and the caption pools
        for key, caption in scan_captions(urls, lost) if poison.enabled else ():
            for target in targets if wants_pool else ():
                if names_target(caption, target):
                    target_captions[target].add(caption)
            yield key, caption

    keys, scanned = select_poison_keys(scanned_pairs(), poison)
    pools = {target: target_caption_pool(captions, dataclasses.replace(poison, target=target))
             for target, captions in target_captions.items()} if wants_pool else {}
    manifest = {
        "rate": poison.rate,
        "count": poison.count,
        "target": poison.target,
        "label_consistent": poison.label_consistent,
        "seed": poison.seed,
        "num_pairs_scanned": scanned,
        "num_poisoned": len(keys),
        "keys": keys,
        "captions": poison.captions,
        "poisons": "captions" if poisons_captions(trigger) else "images",  # what the trigger changes
        "caption_pools": pools,
        "lost_shards": lost,
    }
    if exclude is not None:  # what the data-level defense drops, and how much of the poison that is
        dropped = exclude.keys()
        manifest["excluded"] = {"ranking": exclude.ranking, "score": exclude.score, "fraction": exclude.fraction,
                                "count": len(dropped), "poisoned": len(set(dropped) & set(keys)), "keys": dropped}
    if isinstance(trigger, MultiTrigger):  # which trigger and target each poisoned key got
        manifest["assignments"] = {key: {"trigger": trigger.index(key), "target": key_target(trigger, key, poison)}
                                   for key in keys}
    log.info("poison manifest: %d of %d pairs poisoned (%.1fs)", len(keys), scanned, time.perf_counter() - start)
    return manifest
