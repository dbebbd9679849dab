"""The stream factory: a model's training pairs as its training poisoned them, from shards, a manifest, a
trigger and the model's needs. `ShardDataModule` builds its training stream with it; a module that
re-reads a model's own data for one scoring pass (UBT's discovery, SafeCLIP, the oracle finder) takes a
`replayed_stream` and builds no datamodule.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from datamodules.poison import PoisonConfig, Poisoner, Trigger
from datamodules.poison.manifest import poison_manifest
from datamodules.run_dir import write_once
from datamodules.shards import check_shards_exist, count_samples, expand_shards, shard_sizes
from datamodules.stream import PairStream
from datamodules.text_augment import WORDNET_MISSING, wordnet_available
from datamodules.transforms import MAX_IMAGE_PIXELS, ModelNeeds, TrainSample


@dataclass(frozen=True)
class StreamSettings:
    """How a stream reads and batches (the `data.*` options of the same names)."""

    batch_size: int = 128
    num_workers: int = 1
    seed: int = 0
    shuffle_buffer: int = 2000
    max_corrupt_fraction: float = 0.01
    num_samples: Optional[int] = None
    text_synonyms: str = "wordnet"
    worker_start_method: str = "forkserver"
    max_image_pixels: int = MAX_IMAGE_PIXELS


def pair_stream(urls: list[str], needs: ModelNeeds, manifest: dict, trigger: Optional[Trigger], poison: PoisonConfig,
                settings: StreamSettings, world: int = 1) -> PairStream:
    """This rank's stream of `urls`, poisoned as `manifest` says, batched for `world` ranks."""
    workers = max(1, settings.num_workers)
    if len(urls) < world * workers:
        raise ValueError(f"data.train_shards has {len(urls)} shards but {world} ranks × {workers} workers need at "
                         "least one each; use more shards or fewer data.num_workers")
    total = settings.num_samples if settings.num_samples is not None else count_samples(urls, "data.train_shards")
    excluded = frozenset((manifest.get("excluded") or {}).get("keys", []))
    num_samples = total - len(excluded)
    batches_per_worker = num_samples // (world * workers * settings.batch_size)
    if batches_per_worker < 1:
        raise ValueError(f"{num_samples} pairs are too few for batch_size {settings.batch_size} × {world} ranks × "
                         f"{workers} workers")
    poisoner = Poisoner(trigger, manifest["keys"], poison, manifest["caption_pools"])
    synonyms = settings.text_synonyms == "wordnet"
    if needs.augmented_views and synonyms and not wordnet_available():
        raise ValueError(WORDNET_MISSING)  # here, before training, not from a loader worker mid-epoch
    builder = TrainSample(needs.input_spec, poisoner, augmented_views=needs.augmented_views, seed=settings.seed,
                          use_synonyms=synonyms)
    return PairStream(urls, builder, settings.batch_size, batches_per_worker, settings.num_workers, settings.seed,
                      settings.shuffle_buffer, settings.max_corrupt_fraction, shard_sizes(urls), excluded,
                      settings.worker_start_method, average_size=total // len(urls),
                      max_image_pixels=settings.max_image_pixels)


def replayed_stream(train_shards: Union[str, list[str]], trigger: Optional[Trigger], poison: PoisonConfig,
                    needs: ModelNeeds, settings: StreamSettings, manifest_path: Optional[Path] = None
                    ) -> tuple[PairStream, dict]:
    """The pairs of `train_shards` as a training with `trigger` and `poison` saw them, in one process, and
    their manifest (written to `manifest_path` when given, write-once)."""
    urls = expand_shards(train_shards)
    check_shards_exist(urls, "data.train_shards")
    manifest = poison_manifest(urls, trigger, poison)
    if manifest_path is not None:
        write_once(manifest_path, json.dumps(manifest, indent=1).encode(), "poison manifest")
    return pair_stream(urls, needs, manifest, trigger, poison, settings), manifest
