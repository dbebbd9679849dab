import json

import pytest

from lightning_app.pipelines import Stage, run_stage


def test_a_finished_stage_is_reused_and_a_changed_stage_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    stage = Stage("ft", "configs/embedded/ft.yaml", str(run_dir), ["--trainer.max_epochs", "3"])
    stage.check_or_record_fingerprint()
    (run_dir / "summary.json").write_text(json.dumps({"asr": 0.5}))
    assert run_stage(stage) == {"asr": 0.5}  # reused: nothing is trained

    changed = Stage("ft", "configs/embedded/ft.yaml", str(run_dir), ["--trainer.max_epochs", "4"])
    with pytest.raises(ValueError, match="remove the directory"):
        run_stage(changed)
    other_config = Stage("ft", "configs/embedded/cleanclip.yaml", str(run_dir), ["--trainer.max_epochs", "3"])
    with pytest.raises(ValueError, match="cleanclip.yaml"):
        run_stage(other_config)


def test_a_run_made_from_an_input_that_was_made_again_is_refused(tmp_path):
    upstream = tmp_path / "finder"
    upstream.mkdir()
    (upstream / "summary.json").write_text(json.dumps({"victim_label": "checkerboard"}))
    run_dir = tmp_path / "repair"
    stage = Stage("repair", "configs/embedded/repair.yaml", str(run_dir), inputs=[str(upstream)])
    stage.check_or_record_fingerprint()
    (run_dir / "summary.json").write_text(json.dumps({"asr": 0.7}))
    assert run_stage(stage) == {"asr": 0.7}  # reused while its input is the one it was made from
    assert Stage.remade_inputs(json.loads((run_dir / "stage.json").read_text())) == []

    (upstream / "summary.json").write_text(json.dumps({"victim_label": "triangle"}))  # the finder made again
    with pytest.raises(ValueError, match="finder as it was before"):
        run_stage(stage)
    assert Stage.remade_inputs(json.loads((run_dir / "stage.json").read_text())) == [str(upstream)]


def test_an_input_made_again_with_the_same_result_is_the_one_the_run_was_made_from(tmp_path):
    upstream = tmp_path / "attack"
    upstream.mkdir()
    (upstream / "summary.json").write_text(json.dumps({"asr": 0.98, "wall_time_s": 10.0}))
    run_dir = tmp_path / "cleanclip"
    stage = Stage("cleanclip", "configs/embedded/cleanclip.yaml", str(run_dir), inputs=[str(upstream)])
    stage.check_or_record_fingerprint()
    (run_dir / "summary.json").write_text(json.dumps({"asr": 0.1}))
    recorded = json.loads((run_dir / "stage.json").read_text())

    # made again deterministically: every metric equal, its timing not (and its keys in another order)
    (upstream / "summary.json").write_text(json.dumps({"train_samples_per_s": 800.0, "wall_time_s": 12.5, "asr": 0.98}))
    assert Stage.remade_inputs(recorded) == []
    assert run_stage(stage) == {"asr": 0.1}
    assert json.loads((run_dir / "stage.json").read_text()) == recorded  # still what it was made from

    bytes_only = {key: value for key, value in recorded.items() if key != "inputs_result_sha256"}
    assert Stage.remade_inputs(bytes_only) == [str(upstream)]  # recorded before results were: no way to tell

    (upstream / "summary.json").write_text(json.dumps({"asr": 0.97, "wall_time_s": 10.0}))  # another result
    assert Stage.remade_inputs(recorded) == [str(upstream)]
    with pytest.raises(ValueError, match="attack as it was before"):
        run_stage(stage)


def test_a_run_recorded_before_inputs_were_is_reused_without_them(tmp_path):
    upstream = tmp_path / "finder"
    upstream.mkdir()
    (upstream / "summary.json").write_text("{}")
    run_dir = tmp_path / "repair"
    Stage("repair", "configs/embedded/repair.yaml", str(run_dir)).check_or_record_fingerprint()  # no inputs recorded
    (run_dir / "summary.json").write_text(json.dumps({"asr": 0.1}))
    stage = Stage("repair", "configs/embedded/repair.yaml", str(run_dir), inputs=[str(upstream)])
    assert run_stage(stage) == {"asr": 0.1}
    assert "inputs_sha256" not in json.loads((run_dir / "stage.json").read_text())  # nothing blessed after the fact


def test_a_run_directory_of_unknown_origin_is_not_reused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="stage.json"):
        run_stage(Stage("ft", "configs/embedded/ft.yaml", str(tmp_path / "run")))


def test_a_config_comment_does_not_change_the_fingerprint_but_a_value_does(tmp_path):
    config = tmp_path / "ft.yaml"
    config.write_text("# FT\ntrainer:\n  max_epochs: 3\n")
    run_dir = tmp_path / "run"
    Stage("ft", str(config), str(run_dir)).check_or_record_fingerprint()
    (run_dir / "summary.json").write_text(json.dumps({"asr": 0.5}))

    config.write_text("# FT, with a better comment\ntrainer: {max_epochs: 3}\n")
    assert run_stage(Stage("ft", str(config), str(run_dir))) == {"asr": 0.5}
    config.write_text("# FT\ntrainer:\n  max_epochs: 4\n")
    with pytest.raises(ValueError, match="remove the directory"):
        run_stage(Stage("ft", str(config), str(run_dir)))


def test_a_run_recorded_by_config_path_is_refused_until_migrated_then_reused(tmp_path, monkeypatch):
    import hashlib

    import lightning_app.migrate_records as migration
    import lightning_app.pipelines as pipelines

    monkeypatch.setattr(migration, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(pipelines, "REPO_ROOT", tmp_path)
    config = tmp_path / "ft.yaml"
    config.write_text("trainer:\n  max_epochs: 3\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    legacy = {"config": "ft.yaml", "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(), "overrides": []}
    (run_dir / "stage.json").write_text(json.dumps(legacy))
    (run_dir / "summary.json").write_text(json.dumps({"asr": 0.5}))
    with pytest.raises(ValueError, match="migrate_records"):
        run_stage(Stage("ft", str(config), str(run_dir)))
    migration.main([str(tmp_path)])
    assert json.loads((run_dir / "stage.json").read_text())["values"] == {"trainer.max_epochs": 3}
    assert run_stage(Stage("ft", str(config), str(run_dir))) == {"asr": 0.5}
    # a record whose config has changed since is not migrated into a match
    (run_dir / "stage.json").write_text(json.dumps(legacy))
    config.write_text("trainer:\n  max_epochs: 4\n")
    migration.main([str(tmp_path)])
    assert "values" not in json.loads((run_dir / "stage.json").read_text())


def test_a_fit_that_exits_cleanly_without_a_summary_is_a_failed_stage(tmp_path, monkeypatch):
    import subprocess

    class ExitsCleanly:  # a fit stopped by SIGTERM: Lightning ends it with exit status 0 and our summary is never written
        def __init__(self, *args, **kwargs):
            self.pid = 0

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", ExitsCleanly)
    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="without .*summary.json"):
        run_stage(Stage("ft", "configs/embedded/ft.yaml", str(run_dir)))


def test_editing_a_config_fragment_changes_the_fingerprint(tmp_path, monkeypatch):
    import lightning_app.pipelines as pipelines

    monkeypatch.setattr(pipelines, "REPO_ROOT", tmp_path)
    (tmp_path / "triggers").mkdir()
    fragment = tmp_path / "triggers" / "sig.yaml"
    fragment.write_text("class_path: datamodules.SIG\ninit_args: {delta: 0.235}\n")
    (tmp_path / "sig.yaml").write_text("data:\n  init_args:\n    trigger: triggers/sig.yaml\n")
    inline = tmp_path / "inline.yaml"
    inline.write_text("data:\n  init_args:\n    trigger:\n      class_path: datamodules.SIG\n      init_args: {delta: 0.235}\n")
    named, written_out = Stage("a", "sig.yaml", str(tmp_path / "r")), Stage("a", "inline.yaml", str(tmp_path / "r"))
    # a fragment named by the config counts by its values, as if written out in place
    assert named.fingerprint()["values"] == written_out.fingerprint()["values"]
    by_override = Stage("a", "inline.yaml", str(tmp_path / "r2"), ["--data.init_args.trigger", "triggers/sig.yaml"])
    before_config, before_override = named.fingerprint(), by_override.fingerprint()

    fragment.write_text("class_path: datamodules.SIG\ninit_args: {delta: 0.5}\n")
    assert named.fingerprint() != before_config
    assert by_override.fingerprint() != before_override
    by_override.check_or_record_fingerprint()
    (tmp_path / "r2" / "summary.json").write_text("{}")
    fragment.write_text("class_path: datamodules.SIG\ninit_args: {delta: 0.235}\n")
    with pytest.raises(ValueError, match="remove the directory"):
        run_stage(by_override)
