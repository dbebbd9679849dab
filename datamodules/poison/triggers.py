"""Backdoor triggers. One object both poisons training images and triggers eval images for ASR.

A trigger acts on a float image tensor (3, H, W) in [0, 1] at the model's input resolution, after
resizing and before normalisation. Any randomness (per-image noise, random patch location) is drawn
from a generator seeded by (trigger seed, sample key), so the same key always gets the same trigger
in training, evaluation and outside tools.

`trigger.save(directory, image_size)` writes `trigger.json` (class and parameters) and any fixed
pattern (`pattern.png`, `warp_grid.safetensors`); `load_trigger(directory)` restores it.

The trigger classes live by family (`patch_triggers.py`, `blend_triggers.py`, `multi_trigger.py`, on
`trigger_base.py`); this module is their registry and rebuilds a saved one.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from datamodules.poison.blend_triggers import SIG, Blended, BlendedPattern, WaNet
from datamodules.poison.multi_trigger import MultiTrigger
from datamodules.poison.patch_triggers import BadNet, MaskedPattern, OptimizedPatch
from datamodules.poison.selection import PoisonConfig
from datamodules.poison.text_triggers import TextPhrase
from datamodules.poison.trigger_base import Trigger
from datamodules.run_dir import RunDir, write_once

log = logging.getLogger(__name__)

TRIGGERS: dict[str, type[Trigger]] = {
    cls.name: cls for cls in (BadNet, Blended, BlendedPattern, SIG, WaNet, OptimizedPatch, MaskedPattern, TextPhrase)
}


def load_trigger(directory: str | Path) -> Trigger:
    """Rebuild a trigger from the `trigger.json` (and pattern files) written by `Trigger.save`."""
    directory = Path(directory)
    path = directory / "trigger.json"
    if not path.exists():
        raise ValueError(f"no trigger artifacts at {directory}: {path} is missing")
    spec = json.loads(path.read_text())
    name = spec.pop("name", None)
    if name == MultiTrigger.name:
        parts = [load_trigger(directory / str(i)) for i in range(len(spec["triggers"]))]
        return MultiTrigger(parts, spec.get("targets"), spec.get("seed", 0))
    if name not in TRIGGERS:
        raise ValueError(f"{path}: unknown trigger {name!r}; known: {sorted(TRIGGERS) + [MultiTrigger.name]}")
    if isinstance(spec.get("position"), list):  # a patch's (row, column), saved as a JSON list
        spec["position"] = tuple(spec["position"])
    trigger = TRIGGERS[name](**spec)
    trigger._load_patterns(directory)
    return trigger


def write_trigger_artifacts(run: RunDir, trigger: Trigger, image_size: int, target: str, replace: bool) -> None:
    """The trigger's files and its target into `run`'s trigger/, each write-once (`replace`: before the
    run's first checkpoint, another trigger's files are replaced and its stale ones removed)."""
    with tempfile.TemporaryDirectory(dir=run.path, prefix=".trigger-") as fresh:
        trigger.save(fresh, image_size)
        (Path(fresh) / run.target_path.name).write_text(json.dumps({"target": target}))
        written = {path.relative_to(fresh) for path in Path(fresh).rglob("*") if path.is_file()}
        for name in sorted(written):  # a MultiTrigger's parts in 0/, 1/, …
            write_once(run.trigger_dir / name, (Path(fresh) / name).read_bytes(), "trigger artifact", replace)
    for stale in (p for p in run.trigger_dir.rglob("*") if p.is_file()) if replace else ():
        if stale.relative_to(run.trigger_dir) not in written:  # another trigger's files
            stale.unlink(missing_ok=True)


def attack_target(attack: RunDir, poison: PoisonConfig) -> str:
    """The target a run measures ASR toward when it takes `attack`'s trigger: the attack's own (a defense
    measures the backdoor that made its model), or, where the attack recorded none, `poison.target`."""
    target, path = attack.target(), attack.target_path
    if target is None:
        log.warning("no attack target recorded with %s: ASR is measured toward data.poison.target %r",
                    path.parent, poison.target)
        return poison.target
    if target != poison.target and poison.enabled:
        raise ValueError(f"data.poison.target {poison.target!r} differs from the target {target!r} of the "
                         f"trigger in {path.parent}; poisoning with another run's trigger needs the same target")
    if target != poison.target:
        log.info("ASR target %r taken from %s (config said %r)", target, path, poison.target)
    return target
