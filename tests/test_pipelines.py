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


def test_a_run_directory_of_unknown_origin_is_not_reused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text("{}")
    with pytest.raises(ValueError, match="stage.json"):
        run_stage(Stage("ft", "configs/embedded/ft.yaml", str(tmp_path / "run")))
