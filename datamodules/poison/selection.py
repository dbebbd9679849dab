"""Which training pairs are poisoned: a deterministic function of (key, seed).

Every key gets a score in [0, 1) from a hash of (seed, key). With a `rate`, a key is poisoned when its
score is below the rate, so the decision needs nothing but the key. With a `count`, the `count`
lowest-scoring keys are poisoned. In label-consistent mode only pairs whose caption already names the
target are candidates, and `round(rate·N)` (or `count`) of them are taken by the same order.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Optional


def poison_score(key: str, seed: int) -> float:
    digest = hashlib.sha256(f"poison/{seed}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64


def names_target(caption: str, target: str) -> bool:
    return re.search(rf"\b{re.escape(target.lower())}\b", caption.lower()) is not None


@dataclass
class PoisonConfig:
    """How many and which training pairs carry the trigger, and what their captions say."""

    rate: float = 0.0
    """Fraction of training pairs to poison (ignored when `count` is set)."""
    count: Optional[int] = None
    """Exact number of pairs to poison (CleanCLIP: 1500 in 500K)."""
    target: str = "banana"
    """Target class name; poisoned captions name it and ASR counts predictions of it."""
    label_consistent: bool = False
    """Poison only pairs whose caption already names the target, and keep their captions."""
    captions: Literal["templates", "dataset"] = "templates"
    """Poisoned captions: "templates" fills one of the 80 ImageNet templates with the target (CleanCLIP);
    "dataset" takes a training caption that names the target (Carlini & Terzis' caption set), so
    poisoned captions look like the data's own. Ignored when label_consistent."""
    max_caption_pool: int = 10_000
    """With captions "dataset": how many target-naming training captions to keep (lowest hash first)."""
    seed: int = 0
    """Seed of the selection and of the poisoned captions' templates."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"poison.rate must be in [0, 1], got {self.rate}")
        if self.count is not None and self.count < 0:
            raise ValueError(f"poison.count must be ≥ 0, got {self.count}")
        if not self.target.strip():
            raise ValueError("poison.target must name a class")
        if self.captions not in ("templates", "dataset"):
            raise ValueError(f"poison.captions must be 'templates' or 'dataset', got {self.captions!r}")
        if self.max_caption_pool < 1:
            raise ValueError(f"poison.max_caption_pool must be ≥ 1, got {self.max_caption_pool}")

    @property
    def enabled(self) -> bool:
        return (self.count or 0) > 0 or (self.count is None and self.rate > 0)


def target_caption_pool(captions: Iterable[str], config: PoisonConfig) -> list[str]:
    """The distinct captions naming the target, at most `max_caption_pool`, in an order set by (seed, caption)."""
    pool = {caption for caption in captions if names_target(caption, config.target)}
    ranked = sorted(pool, key=lambda c: (poison_score(c, config.seed), c))[: config.max_caption_pool]
    if not ranked:
        raise ValueError(f"poison.captions is 'dataset' but no training caption names the target {config.target!r}")
    return ranked


def select_poison_keys(pairs: Iterable[tuple[str, str]], config: PoisonConfig) -> tuple[list[str], int]:
    """Pick the poisoned keys from (key, caption) pairs; returns (sorted keys, number of pairs seen)."""
    if not config.enabled:
        return [], sum(1 for _ in pairs)
    candidates: list[tuple[float, str]] = []
    total = 0
    for key, caption in pairs:
        total += 1
        if config.label_consistent and not names_target(caption, config.target):
            continue
        candidates.append((poison_score(key, config.seed), key))
    if config.count is None and not config.label_consistent:
        chosen = [key for score, key in candidates if score < config.rate]
    else:
        wanted = config.count if config.count is not None else round(config.rate * total)
        if wanted > len(candidates):
            raise ValueError(
                f"asked to poison {wanted} pairs but only {len(candidates)} of {total} are candidates"
                + (f" (captions naming {config.target!r})" if config.label_consistent else "")
            )
        chosen = [key for _, key in sorted(candidates)[:wanted]]
    return sorted(chosen), total
