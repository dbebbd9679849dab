"""An experiment file, parsed and expanded into the runs it asks for.

An experiment (YAML under `experiments/`) names stages, each a `main.py fit` config plus settings;
a stage may start `from` another stage's run (its checkpoint, trigger and architecture) and may
`need` others whose run directories its settings refer to. Axes sweep any config key (or whole
configs) over the stages they name; `seeds` repeats the whole chain. `expand` turns this into one
`StageRun` per (stage, axis values, seed), in an order where every run comes after those it needs.

    name: defenses
    runs: runs/defenses                  # every run directory is under here
    seeds: [0, 1, 2]
    stages:
      attack:
        config: configs/embedded/badnet.yaml
        seed_keys: [seed_everything, data.init_args.poison.seed]   # default: [seed_everything]
      cleanclip: {config: configs/embedded/cleanclip.yaml, from: attack}
      abd_craft: {config: configs/embedded/abd_craft.yaml, from: attack, report: false}
      abd:
        config: configs/embedded/abd.yaml
        from: attack
        needs: [abd_craft]
        set: {model.init_args.patch_dir: "{abd_craft.run_dir}/adversarial"}
        cost_includes: [abd_craft]       # ABD's cost is its crafting plus its fine-tuning
        where: {attack: [blended]}       # only at these values of an axis it has (its own or inherited)
    axes:
      attack:
        stages: [attack]
        values:                          # name: a value of `key`, or a mapping of settings
          badnet: {config: configs/embedded/badnet.yaml}
          blended: {config: configs/embedded/blended.yaml}

References in settings, resolved when the stage runs (its dependencies have finished by then):
`{S.run_dir}`, `{S.checkpoint}`, `{S.trigger_dir}` inside a string, and a whole value
`{S.config:dotted.key}` for a value of S's resolved config.yaml (a mapping becomes one setting per
leaf). S is the stage itself's dependency or one of theirs.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datamodules.run_dir import RunDir
from lightning_app.pipelines import REPO_ROOT, Stage

STAGE_KEYS = {"config", "label", "from", "inherit", "needs", "set", "seed_keys", "cost_includes", "report", "where"}
INHERITABLE = ("checkpoint", "trigger", "architecture")
AXIS_KEYS = {"stages", "key", "values", "per_stage"}
EXPERIMENT_KEYS = {"name", "description", "runs", "seeds", "stages", "axes", "tables", "exports"}
TABLE_KEYS = {"block", "files", "stages", "rows", "columns", "reference", "note", "plot", "colour_by", "figure", "compare",
              "compare_axis", "compare_on", "select", "where", "detector"}
SELECT_KEYS = {"maximise", "where", "at_most"}
DETECTOR_KEYS = {"score", "clean", "poisoned_when"}
RESERVED = {"experiment", "stage", "label", "seed", "run_dir", "trigger", "cost_s", "before_ca_top1", "before_asr", "ca_change",
            "input_ca_top1", "input_asr",
            "ca_top1", "ca_top5", "asr", "steps", "wall_time_s", "poison_count", "target", "module", "source"}
REFERENCE = re.compile(r"\{([A-Za-z_][\w-]*)\.(run_dir|checkpoint|trigger_dir)\}")
CONFIG_REFERENCE = re.compile(r"^\{([A-Za-z_][\w-]*)\.config:([\w.]+)\}$")


@dataclass
class StageSpec:
    name: str
    config: str | list[str]
    """The `main.py fit` config, relative to the repository root, or a list of them merged in order (a
    recipe and fragments: tier, trigger, strategy)."""
    label: str
    """How tables and plots name the stage."""
    parent: str | None = None
    """`from`: the stage whose run this one starts from (checkpoint, trigger, architecture)."""
    inherit: list[str] = field(default_factory=lambda: list(INHERITABLE))
    """What `from` takes from the parent: a poisoning stage that starts from a clean model takes its
    checkpoint and architecture but brings its own trigger."""
    needs: list[str] = field(default_factory=list)
    """Other stages this one refers to in its settings."""
    settings: dict[str, Any] = field(default_factory=dict)
    """`set`: config overrides, dotted key → value (may hold references)."""
    seed_keys: list[str] = field(default_factory=lambda: ["seed_everything"])
    """The config keys the experiment's seed is written to."""
    cost_includes: list[str] = field(default_factory=list)
    """Dependencies whose wall time counts in this stage's cost."""
    report: bool = True
    """Whether the stage has a row in tables (a helper stage such as ABD's crafting may not)."""
    where: dict[str, list[str]] = field(default_factory=dict)
    """Run the stage only at these values of these axes (its own or those of the stages it starts from),
    e.g. {attack: [blended_stripes]} for a variant studied on some attacks only."""

    @property
    def dependencies(self) -> list[str]:
        return ([self.parent] if self.parent else []) + [n for n in self.needs if n != self.parent]


@dataclass
class Axis:
    name: str
    stages: list[str]
    values: dict[str, Any]
    """Value name → a value of `key`, or a mapping of settings (`config` picks the stage's config)."""
    key: str | None = None
    per_stage: bool = False
    """Each value is a mapping stage name → settings for that stage (an axis that changes two stages together)."""

    def settings(self, value_name: str, stage: str) -> dict[str, Any]:
        value = self.values[value_name]
        if self.per_stage:
            return dict((value or {}).get(stage) or {})
        if self.key is not None:
            return {self.key: value}
        return dict(value or {})


@dataclass
class TableSpec:
    block: str
    """The results block's name (`<!-- results:NAME -->`) in `files`, and the file name of the table under runs/."""
    files: list[str] = field(default_factory=list)
    stages: list[str] | None = None
    """Stages with rows (default: every reported stage)."""
    rows: list[str] = field(default_factory=lambda: ["stage"])
    """What makes a row: `stage` and axis names, in column order."""
    columns: list[str] = field(default_factory=lambda: ["ca_top1", "asr", "wall_time_s"])
    """Result fields, each as mean ± 95% interval over seeds; `cost` is the wall time relative to `reference`."""
    reference: str | None = None
    """The stage whose cost is 1 (paired by seed and axis values)."""
    note: str = ""
    plot: bool | str = True
    """Also draw CA against ASR: one point per row with error bars (true), or one point per run ("runs")."""
    colour_by: str | None = None
    """For `plot: runs`, the row key whose values get one colour each (default: the stage)."""
    figure: str | None = None
    """Where `--update-docs` also saves the plot (e.g. docs/figures/NAME.png), linked from the table's
    blocks: the committed copy of RUNS/<block>.png that a reader of the docs sees."""
    compare: list[list[str]] = field(default_factory=list)
    """Pairs [A, B] of values of `compare_axis` whose rows (same other row keys) are compared on
    `compare_on`: the table says for each whether the seeds' intervals separate them, and which way."""
    compare_axis: str = "stage"
    """The row key the compared pairs are values of: `stage`, or an axis (e.g. the pretraining objective)."""
    compare_on: list[str] = field(default_factory=lambda: ["asr", "ca_top1"])
    """The result fields the comparisons are made on."""
    where: dict[str, list] = field(default_factory=dict)
    """Only runs with these values of these axes, e.g. {cleaning: [lr1e-3]}; a run the axis does not
    apply to (another stage's) is kept."""
    select: dict[str, Any] | None = None
    """A selection rule (Verma et al.'s): per row and seed, only the run with the highest `maximise`
    among those with `where` ≤ `at_most`, e.g. {maximise: ca_top1, where: asr, at_most: 0.05}. Columns
    `found` (seeds where some run qualifies), `candidates` (how many finished runs each seed's choice was
    made among) and `selected` (which run it was) describe the choice."""
    detector: dict[str, str] | None = None
    """A result field read as a model-level detector: {score: FIELD, clean: STAGE, poisoned_when: lower|higher};
    the table adds, for each row of another stage and for all of them together, the AUROC of `score`
    separating those models from the clean stage's (one model a seed)."""


@dataclass
class Experiment:
    name: str
    path: str
    runs: str
    seeds: list[int]
    stages: dict[str, StageSpec]
    axes: dict[str, Axis]
    tables: list[TableSpec]
    exports: list[str] = field(default_factory=list)
    """Stages whose runs are exported as open_clip local-dir folders under RUNS/exports/."""
    description: str = ""
    archive: str = ""
    """The results archive of the experiment's runs (`results/NAME.jsonl`, lightning_app.experiments.archive)."""


@dataclass
class StageRun:
    stage: StageSpec
    seed: int
    axes: dict[str, str]
    """Axis name → value name, this stage's own and those inherited from its dependencies."""
    config: str | list[str]
    settings: dict[str, Any]
    deps: dict[str, "StageRun"]
    """Every stage this run depends on, directly or through its dependencies, by stage name."""
    run_dir: RunDir

    @property
    def id(self) -> str:
        tag = ",".join(f"{k}={v}" for k, v in self.axes.items())
        return f"{self.stage.name}[{tag}]@seed{self.seed}" if tag else f"{self.stage.name}@seed{self.seed}"


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
        tables.append(TableSpec(**{k: v for k, v in body.items()}))
    experiment = Experiment(
        name=raw["name"], path=str(path), runs=raw.get("runs", f"runs/experiments/{raw['name']}"),
        seeds=[int(s) for s in _list(raw.get("seeds", [0]))], stages=stages, axes=axes, tables=tables,
        exports=_list(raw.get("exports")), description=raw.get("description", ""),
        archive=f"results/{raw['name']}.jsonl")
    _check(experiment)
    return experiment


SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,=+@-]*")
"""Names that become path components (the experiment, its stages, axes and axis values): no separator, no
leading dot, so that `..` or `/` cannot put a run directory or the archive outside runs/ and results/."""


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


def value_name(value: Any) -> str:
    """An axis value's name: floats in short form (1.0e-3 → 0.001)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _check(experiment: Experiment) -> None:
    path = experiment.path
    if not experiment.seeds:
        raise ValueError(f"{path}: `seeds` is empty")
    seen: set[str] = set()
    for name, stage in experiment.stages.items():
        unknown = sorted(set(stage.inherit) - set(INHERITABLE))
        if unknown:
            raise ValueError(f"{path}: stage {name!r}: inherit {unknown}: choose from {list(INHERITABLE)}")
        for dep in stage.dependencies + stage.cost_includes:
            if dep not in experiment.stages:
                raise ValueError(f"{path}: stage {name!r} refers to unknown stage {dep!r}")
            if dep not in seen:
                raise ValueError(f"{path}: stage {name!r} depends on {dep!r}, which must be listed before it")
        for dep in stage.cost_includes:
            if dep not in stage.dependencies:
                raise ValueError(f"{path}: stage {name!r}: cost_includes {dep!r} must be in its `from`/`needs`")
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
            if key != "stage" and key not in experiment.axes:
                raise ValueError(f"{path}: table {table.block!r}: row key {key!r} is neither `stage` nor an axis")
    for stage in experiment.exports:
        if stage not in experiment.stages:
            raise ValueError(f"{path}: exports names unknown stage {stage!r}")


def _check_where(experiment: Experiment, what: str, where: dict[str, Any]) -> None:
    for axis_name, values in where.items():
        known = experiment.axes[axis_name].values if axis_name in experiment.axes else None
        if known is None or not _list(values) or any(value_name(v) not in known for v in _list(values)):
            raise ValueError(f"{experiment.path}: {what}: where {axis_name}: {values!r} names no axis, "
                             "or a value it does not have")


def _axes_of(experiment: Experiment, name: str) -> set[str]:
    """The axes a stage's runs have values of: its own and those of every stage it depends on."""
    own = {axis.name for axis in experiment.axes.values() if name in axis.stages}
    return own.union(*(_axes_of(experiment, dep) for dep in experiment.stages[name].dependencies))


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
            for deps in itertools.product(*(by_stage[d] for d in stage.dependencies)):
                inherited = _consistent(deps)
                if inherited is None:
                    continue
                for values in itertools.product(*(list(a.values) for a in own_axes)):
                    axes = dict(inherited)
                    if any(axes.get(a.name, v) != v for a, v in zip(own_axes, values)):
                        continue
                    axes.update({a.name: v for a, v in zip(own_axes, values)})
                    if any(axes.get(axis) not in kept for axis, kept in stage.where.items()):
                        continue
                    instances.append(_stage_run(experiment, stage, seed, axes, deps, own_axes))
            by_stage[name] = instances
            runs.extend(instances)
    return runs


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
