"""Image-text retrieval sets in clip_benchmark's webdataset layout (MSCOCO, Flickr30k), read by random access.

A directory holds `dataset_type.txt` reading `retrieval` and `<split>/nshards.txt` + `<split>/0.tar …`
with `KEY.<image ext>` + `KEY.txt` per image, the image's captions one per line (clip_benchmark splits
them with `str.splitlines`).

Each item is the clean image, its triggered views (as `datamodules.eval_shards` makes them), its captions
and its place in the whole set; `collate_retrieval` flattens a batch's captions into one list with the
place of the image each belongs to, which is what recall@k pairs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

from datamodules.eval_config import EvalSetConfig
from datamodules.eval_shards import EvalShardSet, index_split
from datamodules.poison import Trigger, poisons_captions
from datamodules.transforms import InputSpec

log = logging.getLogger(__name__)


def _captions(payload: bytes) -> list[str]:
    return [line.strip() for line in payload.decode("utf-8").splitlines() if line.strip()]


class RetrievalSet(EvalShardSet):
    kind = "retrieval"

    def __init__(self, config: EvalSetConfig, spec: InputSpec, trigger: Optional[Trigger],
                 rank: int = 0, world_size: int = 1):
        items = index_split(Path(config.directory) / config.split, "txt")
        super().__init__(config, spec, trigger, items, rank, world_size)
        self.tokenizer = spec.tokenizer

    def __getitem__(self, index: int) -> dict:
        key, image_member, text_member = self.items[index]
        try:
            pixels, captions = self.pixels(image_member), _captions(self.read(text_member))
            if not captions:
                raise ValueError("no caption")
        except Exception as exn:  # PIL raises many types for broken files
            # an image that cannot be read takes no part, and neither do its captions: counted as skipped
            log.warning("skipping corrupt retrieval sample %s in %s: %r", key, image_member.tar, exn)
            pixels, captions = self.blank(), []
        return {**self.views(pixels, key), "captions": captions, "position": self.positions[index], "key": key}

    def collate(self, items: list[dict]) -> dict:
        """Images stacked; every caption of the batch in one list (`captions`, tokenized as `text`) with the
        place of its image (`text_position`); `position` −1 for an image that could not be read. With a
        text-side trigger also `text_triggered`: each caption with the trigger phrase."""
        batch = {name: torch.stack([item[name] for item in items]) for name in items[0] if name.startswith("image")}
        batch["position"] = torch.tensor([item["position"] if item["captions"] else -1 for item in items])
        batch["key"] = [item["key"] for item in items]
        captions = [caption for item in items for caption in item["captions"]]
        batch["captions"] = captions
        batch["text_position"] = torch.tensor([item["position"] for item in items for _ in item["captions"]],
                                              dtype=torch.long)
        batch["text"] = self.tokenizer(captions) if captions else torch.zeros(0, 1, dtype=torch.long)
        if poisons_captions(self.trigger) and captions:  # every caption with the phrase, placed by its own key
            batch["text_triggered"] = self.tokenizer([self.trigger.apply_text(caption, f"{item['key']}/{j}")
                                                      for item in items for j, caption in enumerate(item["captions"])])
        return batch
