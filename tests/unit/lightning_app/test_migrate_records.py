"""Run directories of an older form are migrated once, and what was made from them still knows them."""

from __future__ import annotations

import json

from lightning_app.migrate_run_files import migrate_run_files
from lightning_app.pipelines import Stage, result_sha256, summary_sha256


def _old_attack(run) -> None:
    """A run directory as an older version left it."""
    (run / "poison").mkdir(parents=True)
    (run / "trigger").mkdir()
    (run / "config.yaml").write_text("data:\n  init_args:\n    poison: {target: triangle}\n")
    manifest = {"rate": 0.05, "target": "triangle", "keys": ["a"], "captions": "dataset",
                "caption_pool": ["a triangle"], "lost_shards": []}
    (run / "poison" / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (run / "summary.json").write_text(json.dumps({"poison_count": 1, "asr": 0.9}))


def test_an_old_run_gets_todays_files_and_its_dependants_still_know_it(tmp_path):
    attack, defense = tmp_path / "attack", tmp_path / "defense"
    _old_attack(attack)
    defense.mkdir()
    recorded = {"values": {}, "inputs_sha256": {str(attack): summary_sha256(str(attack))}}
    (defense / "stage.json").write_text(json.dumps(recorded))

    counts = migrate_run_files(tmp_path)

    assert counts == {"manifests": 1, "targets": 1, "stage records given their inputs' results": 1, "summaries": 1}
    manifest = json.loads((attack / "poison" / "manifest.json").read_text())
    assert "caption_pool" not in manifest and manifest["caption_pools"] == {"triangle": ["a triangle"]}
    assert list(manifest).index("caption_pools") == list(manifest).index("captions") + 1  # where training writes it
    assert json.loads((attack / "trigger" / "target.json").read_text()) == {"target": "triangle"}
    summary = json.loads((attack / "summary.json").read_text())
    assert summary["poisoned_captions"] == "dataset"
    migrated = json.loads((defense / "stage.json").read_text())
    assert migrated["inputs_result_sha256"] == {str(attack): result_sha256(summary)}
    assert Stage.remade_inputs(migrated) == []  # the summary's bytes changed, its result did not
    assert all(count == 0 for count in migrate_run_files(tmp_path).values())  # once
