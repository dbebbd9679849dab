"""Every composition the experiment files run (a recipe, its fragments, the stage's settings) parses as
`main.py fit` parses it, and the fingerprint's merged values (`config_values`) are what the parser makes
of them: the runner and the CLI agree on what a run is."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from lightning_app.cli import BackdoorCLI
from lightning_app.config_values import config_values
from lightning_app.experiments.expansion import command_line, expand, resolve
from lightning_app.experiments.loading import load_experiment
from lightning_app.experiments.schema import CONFIG_REFERENCE, StageRun

EXPERIMENTS = sorted(str(path) for path in Path("experiments").glob("*.yaml"))


class _ParseOnly(BackdoorCLI):
    def instantiate_classes(self) -> None:
        pass


def _compositions(path: str) -> dict[tuple, StageRun]:
    """One run per distinct (configs, setting keys) of the experiment's first seed."""
    experiment = load_experiment(path)
    seed = experiment.seeds[0]
    found: dict[tuple, StageRun] = {}
    for run in expand(experiment):
        if run.seed == seed:
            configs = (run.config,) if isinstance(run.config, str) else tuple(run.config)
            found.setdefault((configs, tuple(sorted(run.settings))), run)
    return found


def _arguments(run: StageRun) -> tuple[list[str], list[str]]:
    """The run's configs and its settings as arguments, leaving out values lent by an input's config.yaml
    (its directory does not exist here)."""
    settings = {key: value for key, value in run.settings.items()
                if not (isinstance(value, str) and CONFIG_REFERENCE.match(value))}
    configs = [run.config] if isinstance(run.config, str) else list(run.config)
    return configs, command_line(resolve(dataclasses.replace(run, settings=settings)))


def _value_at(config, key: str):
    for part in key.split("."):
        config = config[part] if isinstance(config, dict) else getattr(config, part)
    return list(config) if isinstance(config, tuple) else config  # YAML has lists where a field is a tuple


def _written(parsed, value):
    """The parsed value as far as it was written: a list of mappings (`data.eval`'s sets) is parsed with
    every field's default filled in, and the fingerprint holds what the files say."""
    if isinstance(value, list) and isinstance(parsed, list) and len(parsed) == len(value) \
            and all(isinstance(v, dict) for v in value):
        return [{k: item.get(k) for k in written} for item, written in zip(parsed, value)]
    return parsed


@pytest.mark.parametrize("path", EXPERIMENTS)
def test_every_composition_parses_and_its_fingerprint_values_are_the_parsers(path):
    compositions = _compositions(path)
    assert compositions
    for run in compositions.values():
        configs, overrides = _arguments(run)
        arguments = [item for config in configs for item in ("--config", config)] + overrides
        parsed = _ParseOnly(args=arguments, run=False).config.as_dict()
        for key, value in config_values(configs, overrides).items():
            assert _written(_value_at(parsed, key), value) == value, f"{run.id}: {key} is {value!r} to the fingerprint"
