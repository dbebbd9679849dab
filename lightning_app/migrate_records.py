"""One-off migration of run records made before their current form, so that no reader keeps a fallback
for an old one. Fingerprints by value: `stage.json` of run directories and the records of
`results/*.jsonl` that name a config *path* and a hash of its values become records of the merged
values themselves (`lightning_app/config_values.py`), so that moving or splitting a config no longer
orphans them. In a directory of runs, also the run files' old forms (`lightning_app/migrate_run_files.py`:
the poison manifest's single caption pool, a missing trigger/target.json, a summary without
`poisoned_captions`).

Records by value have the class paths that have since moved renamed (`RENAMED_CLASS_PATHS`: a config
that names a class by its module, not by its `modules.X` re-export, changed when the module moved).

A record by path is migrated only when it still describes the config as it is now (the same hash of the file's
values and of the fragments its overrides name, as the old check compared); its values are then
those of today's file with its recorded overrides. A record that no longer matches its config is left as
it is: it described another recipe, and stays unmatched.

    python -m lightning_app.migrate_records results/*.jsonl runs   # archives, and directories of runs
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import yaml

from lightning_app.config_values import REPO_ROOT, _inline_fragments, is_fragment
from lightning_app.migrate_run_files import migrate_run_files
from lightning_app.pipelines import INPUT_KEYS, Stage


def _old_values_sha256(path: Path) -> str:
    """How records before this migration hashed a config: its parsed values, fragments inlined."""
    values = _inline_fragments(yaml.safe_load(path.read_text()), path.parent)
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


RENAMED_CLASS_PATHS = {"modules.oracle.Felzenszwalb": "modules.Felzenszwalb"}
"""Class paths that configs named and that moved with `modules/` into role folders."""


def _renamed(recorded: dict) -> dict | None:
    values = {key: RENAMED_CLASS_PATHS.get(value, value) if isinstance(value, str) else value
              for key, value in recorded["values"].items()}
    return {**recorded, "values": values} if values != recorded["values"] else None


def migrated(recorded: dict) -> dict | None:
    """The record by value, or None when it is already by value with today's class paths, or no longer
    matches its config."""
    if "values" in recorded:
        return _renamed(recorded)
    if "config" not in recorded:
        return None
    path = REPO_ROOT / recorded["config"]
    if not path.is_file():
        return None
    overrides = recorded.get("overrides", [])
    if "config_values_sha256" in recorded:
        fragments = {v: _old_values_sha256(REPO_ROOT / v) for v in overrides if is_fragment(v, REPO_ROOT)}
        if recorded["config_values_sha256"] != _old_values_sha256(path) or \
                ("fragments_sha256" in recorded and recorded["fragments_sha256"] != fragments):
            return None
    elif recorded.get("config_sha256") != hashlib.sha256(path.read_bytes()).hexdigest():
        return None
    current = Stage("migration", recorded["config"], "unused", overrides).fingerprint()
    return {**current, **{key: recorded[key] for key in INPUT_KEYS if key in recorded}}


def migrate_archive(path: Path) -> tuple[int, int]:
    """Rewrite an archive's matching records; (migrated, left as they were)."""
    lines, counts = [], [0, 0]
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        new = migrated(record["stage"])
        counts[new is None] += 1
        if new is not None:
            record["stage"] = new
        lines.append(json.dumps(record, sort_keys=True))
    path.write_text("".join(line + "\n" for line in lines))
    return counts[0], counts[1]


def migrate_stage_json(path: Path) -> bool:
    new = migrated(json.loads(path.read_text()))
    if new is not None:
        path.write_text(json.dumps(new, indent=1))
    return new is not None


def main(paths: list[str]) -> None:
    for name in paths:
        path = Path(name)
        if path.is_dir():
            files = sorted(path.rglob("stage.json"))
            done = sum(migrate_stage_json(file) for file in files)
            print(f"{path}: {done} of {len(files)} stage.json migrated")
            for what, count in migrate_run_files(path).items():
                print(f"{path}: {count} {what} migrated")
        elif path.suffix == ".jsonl":
            done, left = migrate_archive(path)
            print(f"{path}: {done} records migrated, {left} left (already by value, or made by another config)")
        else:
            raise ValueError(f"{path}: neither an archive (.jsonl) nor a directory of runs")


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0)
    main(sys.argv[1:])
