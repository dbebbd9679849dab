"""A run's fingerprint is its config's merged values: the files that hold them may move or split."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from lightning_app.config_values import config_values
from lightning_app.experiments.archive import Summaries
from lightning_app.experiments.expansion import expand
from lightning_app.experiments.loading import load_experiment
from lightning_app.pipelines import REPO_ROOT

ARCHIVED = ["experiments/defenses.yaml", "experiments/badclip.yaml", "experiments/objectives.yaml"]


def test_a_config_split_into_a_recipe_and_fragments_has_the_values_of_the_whole(tmp_path):
    (tmp_path / "whole.yaml").write_text(
        "trainer: {max_epochs: 3}\n"
        "data:\n  init_args:\n    batch_size: 8\n    trigger: {class_path: datamodules.SIG, init_args: {delta: 0.2}}\n")
    (tmp_path / "recipe.yaml").write_text("trainer: {max_epochs: 3}\ndata: {init_args: {batch_size: 8}}\n")
    (tmp_path / "sig.yaml").write_text("class_path: datamodules.SIG\ninit_args: {delta: 0.2}\n")
    (tmp_path / "with_sig.yaml").write_text("data: {init_args: {trigger: sig.yaml}}\n")
    whole = config_values("whole.yaml", root=tmp_path)
    assert whole["data.init_args.trigger.init_args.delta"] == 0.2
    assert config_values(["recipe.yaml", "with_sig.yaml"], root=tmp_path) == whole
    assert config_values("recipe.yaml", ["--data.init_args.trigger", "sig.yaml"], root=tmp_path) == whole
    assert config_values("whole.yaml", ["--trainer.max_epochs", "4"], root=tmp_path) != whole


def test_another_class_path_drops_the_init_args_of_the_class_before(tmp_path):
    (tmp_path / "badnet.yaml").write_text(
        "data: {init_args: {trigger: {class_path: datamodules.BadNet, init_args: {size: 8}}}}\n")
    (tmp_path / "sig.yaml").write_text("class_path: datamodules.SIG\ninit_args: {delta: 0.2}\n")
    values = config_values("badnet.yaml", ["--data.init_args.trigger", "sig.yaml"], root=tmp_path)
    assert "data.init_args.trigger.init_args.size" not in values
    same_class = config_values("badnet.yaml", ["--data.init_args.trigger.init_args.size", "4"], root=tmp_path)
    assert same_class["data.init_args.trigger.class_path"] == "datamodules.BadNet"
    assert same_class["data.init_args.trigger.init_args.size"] == 4


def test_overrides_are_read_as_yaml_and_a_missing_config_is_named(tmp_path):
    (tmp_path / "a.yaml").write_text("seed_everything: 0\n")
    values = config_values("a.yaml", ["--seed_everything=3", "--data.init_args.trigger_dir", "null"], root=tmp_path)
    assert values == {"seed_everything": 3, "data.init_args.trigger_dir": None}
    with pytest.raises(ValueError, match="config missing.yaml"):
        config_values("missing.yaml", root=tmp_path)
    with pytest.raises(ValueError, match="has no value"):
        config_values("a.yaml", ["--seed_everything"], root=tmp_path)


def _archived_sources(experiment_path: Path) -> dict[str, str | None]:
    experiment = load_experiment(experiment_path)
    summaries = Summaries(experiment)
    return {run.id: summaries.source(run) for run in expand(experiment)}


@pytest.mark.parametrize("experiment", ARCHIVED)
def test_moving_every_config_keeps_every_archived_record(experiment, tmp_path):
    """`git mv configs/ elsewhere` with the references updated: the report finds the same records."""
    before = _archived_sources(REPO_ROOT / experiment)
    assert sum(source == "archive" for source in before.values()) >= 50  # the archive is read at all
    moved = tmp_path / "moved"
    shutil.copytree(REPO_ROOT / "configs", moved)
    text = (REPO_ROOT / experiment).read_text().replace("configs/", f"{moved}/")
    assert str(moved) in text
    (tmp_path / "experiment.yaml").write_text(text)
    assert _archived_sources(tmp_path / "experiment.yaml") == before
