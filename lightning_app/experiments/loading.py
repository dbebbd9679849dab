"""Reading an experiment file (`schema.py` says what it holds): every key, name, reference and config it
names is checked before anything runs, and a mistake is a ValueError naming the file and the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from lightning_app.experiments.expansion import stage_at
from lightning_app.experiments.schema import (
    AXIS_KEYS,
    DETECTOR_KEYS,
    EXPERIMENT_KEYS,
    INHERITABLE,
    RESERVED,
    SAFE_NAME,
    SELECT_KEYS,
    STAGE_KEYS,
    TABLE_KEYS,
    Axis,
    Experiment,
    StageSpec,
    TableSpec,
    value_name,
)
from lightning_app.experiments.slurm import SlurmSettings
from lightning_app.pipelines import REPO_ROOT


def _unknown(what: str, given: dict, allowed: set[str], path: str) -> None:
    extra = sorted(set(given) - allowed)
    if extra:
        raise ValueError(f"{path}: {what} has unknown key(s) {extra}; allowed: {sorted(allowed)}")


def _list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def load_experiment(path: str | Path) -> Experiment:
    """Parse and check an experiment file; every mistake is a ValueError naming the file and the key."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"experiment file {path} does not exist")
    raw = yaml.safe_load(path.read_text()) or {}
    _unknown("the experiment", raw, EXPERIMENT_KEYS, str(path))
    for key in ("name", "stages"):
        if key not in raw:
            raise ValueError(f"{path}: `{key}` is required")
    _check_names(path, raw)
    stages: dict[str, StageSpec] = {}
    for name, body in raw["stages"].items():
        body = body or {}
        _unknown(f"stage {name!r}", body, STAGE_KEYS, str(path))
        stages[name] = StageSpec(
            name=name, config=body.get("config", ""), label=body.get("label", name), parent=body.get("from"),
            inherit=_list(body.get("inherit", list(INHERITABLE))),
            needs=_list(body.get("needs")), settings=dict(body.get("set") or {}),
            seed_keys=_list(body.get("seed_keys", ["seed_everything"])), cost_includes=_list(body.get("cost_includes")),
            report=bool(body.get("report", True)),
            where={axis: [value_name(v) for v in _list(values)] for axis, values in (body.get("where") or {}).items()})
    axes: dict[str, Axis] = {}
    for name, body in (raw.get("axes") or {}).items():
        _unknown(f"axis {name!r}", body, AXIS_KEYS, str(path))
        values = body.get("values")
        if not values:
            raise ValueError(f"{path}: axis {name!r} has no values")
        if isinstance(values, list):
            if body.get("key") is None:
                raise ValueError(f"{path}: axis {name!r} lists values without a `key` to set")
            values = {value_name(v): v for v in values}
        axes[name] = Axis(name=name, stages=_list(body.get("stages")), values=dict(values), key=body.get("key"),
                          per_stage=bool(body.get("per_stage", False)))
    tables = []
    for body in raw.get("tables") or []:
        _unknown("a table", body, TABLE_KEYS, str(path))
        table = TableSpec(**{k: v for k, v in body.items()})
        if table.seeds is not None:  # `seeds: 3` reads as [3]
            table.seeds = _list(table.seeds)
        tables.append(table)
    experiment = Experiment(
        name=raw["name"], path=str(path), runs=raw.get("runs", f"runs/experiments/{raw['name']}"),
        seeds=[int(s) for s in _list(raw.get("seeds", [0]))], stages=stages, axes=axes, tables=tables,
        exports=_list(raw.get("exports")), description=raw.get("description", ""),
        archive=f"results/{raw['name']}.jsonl", launcher=dict(raw.get("launcher") or {}))
    SlurmSettings.from_mapping(experiment.launcher, str(path))  # a mistake in the block shows before any run
    _check(experiment)
    return experiment


def _check_names(path: Path, raw: dict) -> None:
    named = [("experiment name", raw["name"])]
    named += [("stage name", name) for name in raw["stages"]]
    for axis, body in (raw.get("axes") or {}).items():
        values = (body or {}).get("values") or {}
        named += [("axis name", axis)] + [(f"axis {axis!r} value", value_name(v))
                                           for v in (values if isinstance(values, (list, dict)) else [values])]
    named += [("table block", (body or {}).get("block")) for body in raw.get("tables") or []]
    for what, name in named:
        if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
            raise ValueError(f"{path}: {what} {name!r} is not a safe path component: use letters, digits and "
                             "_ . , = + @ - (not starting with a dot); it names run directories and the archive")


def _check(experiment: Experiment) -> None:
    path = experiment.path
    if not experiment.seeds:
        raise ValueError(f"{path}: `seeds` is empty")
    seen: set[str] = set()
    for name, stage in experiment.stages.items():
        for what, spec in _stage_variants(experiment, stage):
            unknown = sorted(set(spec.inherit) - set(INHERITABLE))
            if unknown:
                raise ValueError(f"{path}: {what}: inherit {unknown}: choose from {list(INHERITABLE)}")
            for dep in spec.dependencies + stage.cost_includes:
                if dep not in experiment.stages:
                    raise ValueError(f"{path}: {what} refers to unknown stage {dep!r}")
                if dep not in seen:
                    raise ValueError(f"{path}: {what} depends on {dep!r}, which must be listed before it")
            for dep in stage.cost_includes:
                if dep not in spec.dependencies:
                    raise ValueError(f"{path}: {what}: cost_includes {dep!r} must be in its `from`/`needs`")
        seen.add(name)
        configs = [stage.config] + [a.settings(v, name).get("config") for a in experiment.axes.values()
                                    if name in a.stages for v in a.values]
        for config in [c for cs in filter(None, configs) for c in ([cs] if isinstance(cs, str) else cs)]:
            if not (REPO_ROOT / config).is_file():
                raise ValueError(f"{path}: stage {name!r}: config {config} does not exist")
        if not stage.config and not any(name in a.stages for a in experiment.axes.values()):
            raise ValueError(f"{path}: stage {name!r} has no `config`")
        _check_where(experiment, f"stage {name!r}", stage.where)
        for axis_name in stage.where:
            if axis_name not in _axes_of(experiment, name):
                raise ValueError(f"{path}: stage {name!r}: where {axis_name}: the axis applies neither to the "
                                 "stage nor to a stage it starts from or needs")
    for axis in experiment.axes.values():
        if axis.name in RESERVED:
            raise ValueError(f"{path}: axis name {axis.name!r} is a result field; name it otherwise")
        for stage in axis.stages:
            if stage not in experiment.stages:
                raise ValueError(f"{path}: axis {axis.name!r} names unknown stage {stage!r}")
    for table in experiment.tables:
        for stage in _list(table.stages) + _list(table.reference):
            if stage not in experiment.stages:
                raise ValueError(f"{path}: table {table.block!r} names unknown stage {stage!r}")
        axis = table.compare_axis
        names = experiment.stages if axis == "stage" else experiment.axes[axis].values if axis in experiment.axes else {}
        for pair in table.compare:
            if len(pair) != 2 or any(value not in names for value in pair) or axis not in table.rows:
                raise ValueError(f"{path}: table {table.block!r}: compare {pair!r} must be two values of "
                                 f"{axis!r}, in a table whose rows include {axis!r}")
        _check_where(experiment, f"table {table.block!r}", table.where)
        if table.select is not None:
            _unknown(f"table {table.block!r}: select", table.select, SELECT_KEYS, str(path))
            if set(table.select) != SELECT_KEYS:
                raise ValueError(f"{path}: table {table.block!r}: select needs {sorted(SELECT_KEYS)}")
        if table.detector is not None:
            _unknown(f"table {table.block!r}: detector", table.detector, DETECTOR_KEYS, str(path))
            if (set(table.detector) != DETECTOR_KEYS or table.detector["clean"] not in experiment.stages
                    or table.detector["poisoned_when"] not in ("lower", "higher")):
                raise ValueError(f"{path}: table {table.block!r}: detector needs score, clean (a stage) and "
                                 f"poisoned_when (lower or higher); got {table.detector!r}")
        if table.plot not in (True, False, "runs"):
            raise ValueError(f"{path}: table {table.block!r}: plot is {table.plot!r}; expected true, false or runs")
        if table.figure is not None and (not table.plot or not str(table.figure).endswith(".png")):
            raise ValueError(f"{path}: table {table.block!r}: figure {table.figure!r} needs a plot and a .png path")
        if table.colour_by is not None and table.colour_by not in table.rows:
            raise ValueError(f"{path}: table {table.block!r}: colour_by {table.colour_by!r} is not one of its rows")
        for key in table.rows:
            if key not in ("stage", "seed") and key not in experiment.axes:
                raise ValueError(f"{path}: table {table.block!r}: row key {key!r} is neither `stage`, `seed` nor an axis")
        if table.seeds is not None and (not table.seeds or any(s not in experiment.seeds for s in table.seeds)):
            raise ValueError(f"{path}: table {table.block!r}: seeds {table.seeds!r} must be some of the experiment's "
                             f"seeds {experiment.seeds}")
    for stage in experiment.exports:
        if stage not in experiment.stages:
            raise ValueError(f"{path}: exports names unknown stage {stage!r}")


def _check_where(experiment: Experiment, what: str, where: dict[str, Any]) -> None:
    for axis_name, values in where.items():
        known = experiment.axes[axis_name].values if axis_name in experiment.axes else None
        if known is None or not _list(values) or any(value_name(v) not in known for v in _list(values)):
            raise ValueError(f"{experiment.path}: {what}: where {axis_name}: {values!r} names no axis, "
                             "or a value it does not have")


def _stage_variants(experiment: Experiment, stage: StageSpec) -> list[tuple[str, StageSpec]]:
    """The stage as written, and as each per-stage axis value that gives it another `from`/`needs`/`inherit`
    makes it, each with how an error names it."""
    variants = [(f"stage {stage.name!r}", stage)]
    for axis in experiment.axes.values():
        if stage.name in axis.stages:
            variants += [(f"stage {stage.name!r} at {axis.name}={value}", stage_at(stage, [axis], (value,)))
                         for value in axis.values if axis.structure(value, stage.name)]
    return variants


def _axes_of(experiment: Experiment, name: str) -> set[str]:
    """The axes a stage's runs have values of: its own and those of every stage it depends on (at any value)."""
    own = {axis.name for axis in experiment.axes.values() if name in axis.stages}
    deps = {dep for _, spec in _stage_variants(experiment, experiment.stages[name]) for dep in spec.dependencies}
    return own.union(*(_axes_of(experiment, dep) for dep in deps))
