"""One-off migration of the files of run directories made before their current form, so that no reader
keeps a fallback for them (`python -m lightning_app.migrate_records runs` runs it with the fingerprints):

- `poison/manifest.json`: the single-target `caption_pool` becomes `caption_pools` (every target's pool),
  the form training writes now. The manifest is write-once, so a resume compares it byte for byte with
  what `prepare_data` writes: the migrated file is written as `prepare_data` writes it.
- `trigger/target.json`, for runs from before it: the attack's target from the run's config.
- `summary.json`, for runs from before summaries recorded it: `poisoned_captions`, from the manifest.
  Its bytes change, so first every run made from it records the result of its inputs (what the run
  measured, which the new field does not change), by which the runner still knows its inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from lightning_app.pipelines import result_sha256, summary_sha256


def migrate_manifest(path: Path) -> bool:
    manifest = json.loads(path.read_text())
    if "caption_pool" not in manifest:
        return False
    pool = manifest.pop("caption_pool")
    if "caption_pools" not in manifest:  # before multi-target attacks: one pool, of the poison target
        rebuilt = {}
        for key, value in manifest.items():  # where prepare_data writes it: after `captions`
            rebuilt[key] = value
            if key == "captions":
                rebuilt["caption_pools"] = {manifest["target"]: pool} if pool else {}
        manifest = rebuilt
    path.write_text(json.dumps(manifest, indent=1))
    return True


def migrate_target(run: Path) -> bool:
    trigger, target_file = run / "trigger", run / "trigger" / "target.json"
    if not trigger.is_dir() or target_file.exists() or not (run / "config.yaml").exists():
        return False
    config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    target = (((config.get("data") or {}).get("init_args") or {}).get("poison") or {}).get("target")
    if target is None:
        return False
    target_file.write_text(json.dumps({"target": target}))  # as prepare_data writes it
    return True


def _summary_with_captions(run: Path) -> dict | None:
    """The run's summary with `poisoned_captions` added, or None when it has the field or needs none."""
    summary_path, manifest_path = run / "summary.json", run / "poison" / "manifest.json"
    summary = json.loads(summary_path.read_text())
    if "poisoned_captions" in summary or not summary.get("poison_count") or not manifest_path.exists():
        return None
    manifest = json.loads(manifest_path.read_text())
    summary["poisoned_captions"] = "kept" if manifest.get("label_consistent") else manifest.get("captions", "templates")
    return summary


def record_inputs_results(stage_files: list[Path]) -> int:
    """Record in each stage.json the result of every input whose summary is still the one it names."""
    done = 0
    for path in stage_files:
        recorded = json.loads(path.read_text())
        results = recorded.get("inputs_result_sha256", {})
        for run_dir, digest in recorded.get("inputs_sha256", {}).items():
            if run_dir not in results and summary_sha256(run_dir) == digest:
                summary = _summary_with_captions(Path(run_dir)) or json.loads((Path(run_dir) / "summary.json").read_text())
                results[run_dir] = result_sha256(summary)
        if results and results != recorded.get("inputs_result_sha256"):
            recorded["inputs_result_sha256"] = results
            path.write_text(json.dumps(recorded, indent=1))
            done += 1
    return done


def migrate_summary(run: Path) -> bool:
    summary = _summary_with_captions(run)
    if summary is None:
        return False
    (run / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True))
    return True


def migrate_run_files(root: Path) -> dict[str, int]:
    """Every run directory under `root` (a directory holding config.yaml); counts of what was migrated."""
    runs = sorted({path.parent for path in root.rglob("config.yaml")})
    counts = {"manifests": sum(migrate_manifest(run / "poison" / "manifest.json") for run in runs
                               if (run / "poison" / "manifest.json").exists()),
              "targets": sum(migrate_target(run) for run in runs)}
    counts["stage records given their inputs' results"] = record_inputs_results(sorted(root.rglob("stage.json")))
    counts["summaries"] = sum(migrate_summary(run) for run in runs if (run / "summary.json").exists())
    return counts
