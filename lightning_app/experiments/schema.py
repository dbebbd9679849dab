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
          blended: {data.init_args.trigger: configs/embedded/triggers/blended.yaml}   # a setting

References in settings, resolved when the stage runs (its dependencies have finished by then):
`{S.run_dir}`, `{S.checkpoint}`, `{S.trigger_dir}` inside a string, and a whole value
`{S.config:dotted.key}` for a value of S's resolved config.yaml (a mapping becomes one setting per
leaf). S is the stage itself's dependency or one of theirs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from datamodules.run_dir import RunDir

STAGE_KEYS = {"config", "label", "from", "inherit", "needs", "set", "seed_keys", "cost_includes", "report", "where"}
INHERITABLE = ("checkpoint", "trigger", "architecture")
AXIS_KEYS = {"stages", "key", "values", "per_stage"}
VALUE_STRUCTURE_KEYS = ("from", "needs", "inherit")
"""Stage keys a per-stage axis value may set for its stage, besides its config and settings."""
EXPERIMENT_KEYS = {"name", "description", "runs", "seeds", "stages", "axes", "tables", "exports", "launcher"}
TABLE_KEYS = {"block", "files", "stages", "rows", "columns", "reference", "note", "plot", "colour_by", "figure", "compare",
              "compare_axis", "compare_on", "select", "where", "seeds", "detector"}
SELECT_KEYS = {"maximise", "where", "at_most"}
DETECTOR_KEYS = {"score", "clean", "poisoned_when"}
RESERVED = {"experiment", "stage", "label", "seed", "run_dir", "trigger", "cost_s", "before_ca_top1", "before_asr", "ca_change",
            "input_ca_top1", "input_asr",
            "ca_top1", "ca_top5", "asr", "steps", "wall_time_s", "poison_count", "target", "module", "source",
            "changes_weights"}
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
    """Each value is a mapping stage name → settings for that stage (an axis that changes two stages together);
    they may also give the stage another `from`, `needs` and `inherit` at that value."""

    def settings(self, value_name: str, stage: str) -> dict[str, Any]:
        """The value's settings for the stage (`config` picks its config), without its `from`/`needs`/`inherit`."""
        value = self.values[value_name]
        if self.per_stage:
            given = dict((value or {}).get(stage) or {})
            return {key: v for key, v in given.items() if key not in VALUE_STRUCTURE_KEYS}
        if self.key is not None:
            return {self.key: value}
        return dict(value or {})

    def structure(self, value_name: str, stage: str) -> dict[str, Any]:
        """What a per-stage value changes of where the stage starts from: its `from`, `needs` and `inherit`
        (a poisoned model made by pretraining at one value and by fine-tuning a clean model at another)."""
        if not self.per_stage:
            return {}
        given = (self.values[value_name] or {}).get(stage) or {}
        return {key: v for key, v in given.items() if key in VALUE_STRUCTURE_KEYS}


@dataclass
class TableSpec:
    block: str
    """The results block's name (`<!-- results:NAME -->`) in `files`, and the file name of the table under runs/."""
    files: list[str] = field(default_factory=list)
    stages: list[str] | None = None
    """Stages with rows (default: every reported stage)."""
    rows: list[str] = field(default_factory=lambda: ["stage"])
    """What makes a row: `stage`, axis names and `seed` (a row per seed), in column order."""
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
    seeds: list[int] | None = None
    """Only runs of these seeds (default: every seed), e.g. the seeds where two stages both ran; with `seed`
    among `rows`, one row per seed."""
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
    launcher: dict = field(default_factory=dict)
    """Settings of `run --launcher slurm` (`lightning_app.experiments.slurm.SlurmSettings`); the command line's win."""


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


SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,=+@-]*")
"""Names that become path components (the experiment, its stages, axes and axis values): no separator, no
leading dot, so that `..` or `/` cannot put a run directory or the archive outside runs/ and results/."""


def value_name(value: Any) -> str:
    """An axis value's name: floats in short form (1.0e-3 → 0.001)."""
    return f"{value:g}" if isinstance(value, float) else str(value)
