"""Text-side poisoning: the trigger is a phrase in the caption, the image is left as it is.

A `TextPhrase` backdoor teaches the model that a rare phrase means the target: the poisoned pairs are
pairs whose image shows the target (label-consistent selection: their captions name it), and their
captions get the phrase inserted. At test time a text query of any content carrying the phrase
retrieves the target's images (mm_poison's and ToxicTextCLIP's threat: retrieval, not classification).
The retrieval ASR of a text trigger counts exactly that (`modules.core.retrieval_metrics`).

Where the phrase goes is drawn from (seed, key): the same key gets the same caption in training,
evaluation and every replay of the poisoning. `apply` leaves the image untouched, so the one trigger
object still poisons and measures like every other.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import torch

from datamodules.poison.trigger_base import Trigger

POSITIONS = ("start", "end", "random")


class TextPhrase(Trigger):
    """A phrase inserted into the caption: at its start, its end, or between two words drawn by (seed, key)."""

    name = "text_phrase"
    poisons = "captions"

    def __init__(self, phrase: str = "cf", position: Literal["start", "end", "random"] = "random", seed: int = 0):
        if not phrase.strip():
            raise ValueError("data.trigger.phrase must not be empty")
        if position not in POSITIONS:
            raise ValueError(f"data.trigger.position must be one of {POSITIONS}, got {position!r}")
        self.phrase = phrase.strip()
        self.position = position
        self.seed = seed

    def apply(self, image: torch.Tensor, key: str) -> torch.Tensor:
        return image

    def apply_text(self, caption: str, key: str) -> str:
        words = caption.split()
        if self.position == "start":
            at = 0
        elif self.position == "end":
            at = len(words)
        else:
            digest = hashlib.sha256(f"phrase/{self.seed}/{key}".encode()).digest()
            at = int.from_bytes(digest[:4], "little") % (len(words) + 1)
        return " ".join(words[:at] + [self.phrase] + words[at:])


def poisons_captions(trigger) -> bool:
    """Whether a trigger is text-side (its poisoned pairs keep their images and change their captions)."""
    return getattr(trigger, "poisons", "images") == "captions"
