"""An experiment expanded into the runs it asks for: one `StageRun` per (stage, axis values, seed), in an
order where every run comes after those it needs, and each run as the pipeline runs it: its settings,
with the references to its dependencies resolved, as `main.py fit` arguments.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

from datamodules.run_dir import RunDir
from lightning_app.experiments.schema import (
    CONFIG_REFERENCE,
    INHERITABLE,
    REFERENCE,
    Axis,
    Experiment,
    StageRun,
    StageSpec,
)
from lightning_app.pipelines import Stage


def _consistent(runs: tuple[StageRun, ...]) -> dict[str, str] | None:
    """The union of the runs' axis values, or None when two runs disagree on an axis."""
    merged: dict[str, str] = {}
    for run in runs:
        for axis, value in run.axes.items():
            if merged.setdefault(axis, value) != value:
                return None
    return merged


def restrict_axes(experiment: Experiment, choices: list[str]) -> None:
    """Keep only some values of some axes: each choice is `AXIS=VALUE[,VALUE…]` (the `--where` option)."""
    for choice in choices:
        name, sep, listed = choice.partition("=")
        if not sep or not listed:
            raise ValueError(f"--where {choice!r}: write AXIS=VALUE[,VALUE...]")
        if name not in experiment.axes:
            raise ValueError(f"--where {choice!r}: no axis {name!r}; the experiment's axes are {sorted(experiment.axes)}")
        axis = experiment.axes[name]
        wanted = listed.split(",")
        unknown = [v for v in wanted if v not in axis.values]
        if unknown:
            raise ValueError(f"--where {choice!r}: axis {name!r} has no value {unknown}; its values are {list(axis.values)}")
        axis.values = {v: axis.values[v] for v in axis.values if v in wanted}


def expand(experiment: Experiment) -> list[StageRun]:
    """Every run of the experiment: stages × their axes' values × seeds, dependencies first."""
    runs: list[StageRun] = []
    for seed in experiment.seeds:
        by_stage: dict[str, list[StageRun]] = {}
        for name, stage in experiment.stages.items():
            own_axes = [a for a in experiment.axes.values() if name in a.stages]
            instances = []
            specs = {values: stage_at(stage, own_axes, values)
                     for values in itertools.product(*(list(a.values) for a in own_axes))}
            for dependencies in dict.fromkeys(tuple(spec.dependencies) for spec in specs.values()):
                for deps in itertools.product(*(by_stage[d] for d in dependencies)):
                    inherited = _consistent(deps)
                    if inherited is None:
                        continue
                    for values, spec in specs.items():
                        if tuple(spec.dependencies) != dependencies:
                            continue
                        axes = dict(inherited)
                        if any(axes.get(a.name, v) != v for a, v in zip(own_axes, values)):
                            continue
                        axes.update({a.name: v for a, v in zip(own_axes, values)})
                        if any(axes.get(axis) not in kept for axis, kept in stage.where.items()):
                            continue
                        instances.append(_stage_run(experiment, spec, seed, axes, deps, own_axes))
            by_stage[name] = instances
            runs.extend(instances)
    return runs


def stage_at(stage: StageSpec, own_axes: list[Axis], values: tuple[str, ...]) -> StageSpec:
    """The stage as it runs at these values of its own axes: a per-stage value may start it from another
    stage, with other needs and inheritance (BadCLIP's poisoned model fine-tunes a clean one and needs its
    patch, where BadNet's is pretrained from scratch)."""
    changes: dict[str, Any] = {}
    for axis, value in zip(own_axes, values):
        given = axis.structure(value, stage.name)
        if "from" in given:
            changes["parent"] = given["from"]
        for key in ("needs", "inherit"):
            if key in given:
                changes[key] = [given[key]] if isinstance(given[key], str) else list(given[key] or [])
    return dataclasses.replace(stage, **changes) if changes else stage


def _stage_run(experiment: Experiment, stage: StageSpec, seed: int, axes: dict[str, str], deps: tuple[StageRun, ...],
               own_axes: list[Axis]) -> StageRun:
    settings: dict[str, Any] = {}
    if stage.parent:
        p = stage.parent
        inherited = {"checkpoint": ("model.init_args.model.pretrained", f"{{{p}.checkpoint}}"),
                     "trigger": ("data.init_args.trigger_dir", f"{{{p}.trigger_dir}}"),
                     "architecture": ("model.init_args.model.name", f"{{{p}.config:model.init_args.model.name}}")}
        settings.update(dict(inherited[what] for what in INHERITABLE if what in stage.inherit))
    config = stage.config
    for axis in own_axes:
        values = axis.settings(axes[axis.name], stage.name)
        config = values.pop("config", config)
        settings.update(values)
    settings.update(stage.settings)
    settings.update({key: seed for key in stage.seed_keys})
    all_deps: dict[str, StageRun] = {}
    for dep in deps:
        all_deps.update(dep.deps)
        all_deps[dep.stage.name] = dep
    tag = ",".join(f"{k}={v}" for k, v in axes.items())
    run_dir = Path(experiment.runs) / stage.name / tag / f"seed{seed}" if tag else Path(experiment.runs) / stage.name / f"seed{seed}"
    return StageRun(stage=stage, seed=seed, axes=axes, config=config, settings=settings, deps=all_deps,
                    run_dir=RunDir(run_dir))


def resolve(run: StageRun) -> dict[str, Any]:
    """The run's settings with references to its dependencies' run directories filled in."""
    resolved: dict[str, Any] = {}
    for key, value in run.settings.items():
        if isinstance(value, str):
            whole = CONFIG_REFERENCE.match(value)
            if whole:
                value = _dependency(run, whole.group(1), key).run_dir.config_value(whole.group(2))
            else:
                value = REFERENCE.sub(lambda m: _path(_dependency(run, m.group(1), key).run_dir, m.group(2)), value)
        resolved.update(flatten(key, value))
    return resolved


def pipeline_stage(run: StageRun) -> Stage:
    """The run as the pipeline runs it: its config, its settings as `main.py fit` arguments, its inputs."""
    return Stage(run.id, run.config, str(run.run_dir), command_line(resolve(run)),
                 inputs=[str(dep.run_dir) for dep in run.deps.values()])


def _path(run_dir: RunDir, what: str) -> str:
    return str(run_dir.path if what == "run_dir" else getattr(run_dir, what))


def _dependency(run: StageRun, name: str, key: str) -> StageRun:
    if name not in run.deps:
        raise ValueError(f"stage {run.stage.name!r}: setting {key!r} refers to {name!r}, which is not among its "
                         f"dependencies {sorted(run.deps)}")
    return run.deps[name]


def flatten(key: str, value: Any) -> dict[str, Any]:
    """A mapping value becomes one dotted setting per leaf; None leaves inside a mapping are dropped (their default)."""
    if not isinstance(value, dict):
        return {key: value}
    out: dict[str, Any] = {}
    for k, v in value.items():
        if v is not None:
            out.update(flatten(f"{key}.{k}", v))
    return out


def command_line(settings: dict[str, Any]) -> list[str]:
    """Settings as `main.py fit` arguments."""
    args = []
    for key, value in settings.items():
        args += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
    return args
