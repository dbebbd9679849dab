"""Several triggers sharing the poisoned pairs, to one target or each to its own (Huang et al.).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Optional

import torch

from datamodules.poison.trigger_base import Trigger


class MultiTrigger(Trigger):
    """Several triggers in one attack (Huang et al.'s multi-trigger configs): each poisoned key gets one
    of `triggers`, chosen by (seed, key), and its caption names that trigger's target: `targets` gives
    one target per trigger (each to its own target), or None for all to the poison target. ASR is
    measured per trigger, toward its own target, on every eval image (`parts`); `apply` is the poisoning
    of one key. Saved as `trigger.json` plus each trigger's own directory `0/`, `1/`, …"""

    name = "multi"

    def __init__(self, triggers: list[Trigger], targets: Optional[list[str]] = None, seed: int = 0):
        """
        Args:
            triggers: The triggers, at least two.
            targets: One target class per trigger; None: every trigger to `data.poison.target`.
            seed: Seed of which trigger each poisoned key gets.
        """
        if len(triggers) < 2:
            raise ValueError(f"MultiTrigger triggers: give at least two, got {len(triggers)}")
        if any(isinstance(t, MultiTrigger) for t in triggers):
            raise ValueError("MultiTrigger triggers: a MultiTrigger cannot contain another")
        if targets is not None and len(targets) != len(triggers):
            raise ValueError(f"MultiTrigger targets: {len(targets)} targets for {len(triggers)} triggers; give one each")
        self.triggers = list(triggers)
        self.targets = list(targets) if targets is not None else None
        self.seed = seed

    def index(self, key: str) -> int:
        """Which trigger poisons `key`."""
        digest = hashlib.sha256(f"multi/{self.seed}/{key}".encode()).digest()
        return int.from_bytes(digest[:8], "little") % len(self.triggers)

    def target_of(self, index: int, default: str) -> str:
        return self.targets[index] if self.targets is not None else default

    def part_names(self) -> list[str]:
        """`0_badnet`, `1_blended`, …: the labels of per-trigger ASR."""
        return [f"{i}_{t.name}" for i, t in enumerate(self.triggers)]

    def parts(self, default_target: str) -> list[tuple[str, Trigger, str]]:
        """(name, trigger, target) per trigger."""
        return [(name, t, self.target_of(i, default_target))
                for i, (name, t) in enumerate(zip(self.part_names(), self.triggers))]

    def apply(self, image: torch.Tensor, key: str) -> torch.Tensor:
        return self.triggers[self.index(key)].apply(image, key)

    def check_fits(self, image_size: int) -> None:
        for trigger in self.triggers:
            trigger.check_fits(image_size)

    def describe(self) -> dict:
        return {"name": self.name, "seed": self.seed, "targets": self.targets,
                "triggers": [t.describe() for t in self.triggers]}

    def _save_patterns(self, directory: Path, image_size: int) -> None:
        for i, trigger in enumerate(self.triggers):
            trigger.save(directory / str(i), image_size)
