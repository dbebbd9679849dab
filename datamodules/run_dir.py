"""One owner of a run directory's layout: what a finished `main.py fit` leaves behind and where.

    RUN/config.yaml              the resolved config
    RUN/checkpoints/last.ckpt    the final (or newest) weights
    RUN/trigger/                 the attack's trigger artifacts and target.json
    RUN/poison/manifest.json     the poisoned keys
    RUN/summary.json             final CA/ASR, attack, steps, wall time

Stages hand each other a `RunDir`, not paths rebuilt by hand. It lives with the data layer because
the DataModule writes the trigger and manifest into it; everything above imports it from here.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

TARGET_FILE = "target.json"


def write_once(path: Path, content: bytes, what: str, replace: bool = False) -> None:
    """Write `content` to `path` unless the file exists: then it must hold exactly `content`.

    The poison manifest and the trigger artifacts describe what a run's weights were trained with; a
    later fit into the same directory (a resume, a retry) may not rewrite them with something else.
    `replace`: no weights exist yet (the run has no checkpoint), so what an earlier fit recorded
    describes nothing (a fit refused by a later check) and is replaced."""
    if path.exists() and not replace:
        if path.read_bytes() != content:
            raise ValueError(f"{what} {path} was written by an earlier fit of this run directory and differs from "
                             "what this fit would write (another poisoning, trigger or data): the run's weights were "
                             "trained with the recorded one; resume with the run's own config.yaml or use a new "
                             "run directory")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(content)
    os.replace(partial, path)


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def checkpoint(self) -> Path:
        """The run's final weights (`last.ckpt`; a directory under DeepSpeed)."""
        return self.checkpoints / "last.ckpt"

    @property
    def trigger_dir(self) -> Path:
        return self.path / "trigger"

    @property
    def target_path(self) -> Path:
        return self.trigger_dir / TARGET_FILE

    @property
    def manifest_path(self) -> Path:
        return self.path / "poison" / "manifest.json"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    def has_checkpoints(self) -> bool:
        return self.checkpoints.is_dir() and any(self.checkpoints.glob("*.ckpt"))

    def is_finished(self) -> bool:
        return self.summary_path.exists()

    @functools.cached_property
    def config(self) -> dict:
        if not self.config_path.exists():
            raise ValueError(f"{self.path} is not a run directory: {self.config_path} is missing")
        return yaml.safe_load(self.config_path.read_text()) or {}

    def config_value(self, dotted: str) -> Any:
        """A value of the resolved config by dotted key (`data.init_args.poison`); a missing key is an error naming it."""
        value: Any = self.config
        for part in dotted.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ValueError(f"{self.config_path} has no {dotted!r} (stops at {part!r})")
            value = value[part]
        return value

    def model_name(self) -> str:
        return self.config_value("model.init_args.model.name")

    def target(self) -> str | None:
        """The attack's target, from trigger/target.json (None for a run without a trigger)."""
        return json.loads(self.target_path.read_text())["target"] if self.target_path.exists() else None

    def summary(self) -> dict:
        """summary.json (runs from before its current form: `python -m lightning_app.migrate_records RUNS`)."""
        try:
            return json.loads(self.summary_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exn:
            raise ValueError(f"{self.summary_path} is not a whole summary ({exn}): the run's record is damaged; "
                             "remove the file (and rerun the run) or restore it") from exn


@dataclass(frozen=True)
class DataRecord:
    """What a run's data was, for its summary.json (`ShardDataModule.record`)."""

    attack: Optional[dict] = None
    """The trigger's name and parameters (None: no trigger, no ASR)."""
    target: Optional[str] = None
    """The class ASR counts toward."""
    poison_count: Optional[int] = None
    """Training pairs poisoned."""
    poisoned_captions: Optional[str] = None
    """The poisoned pairs' captions: "kept" (label-consistent), "templates" or "dataset" (None: no poisoning)."""
    excluded: Optional[dict] = None
    """What a data-level defense dropped (count, and poisoned among them)."""
    data_health: dict[str, int] = field(default_factory=dict)
    """This rank's counts of the training data consumed (good, skipped, lost)."""
