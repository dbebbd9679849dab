"""How a result column is named in a table, and how rows group into a table's rows.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from lightning_app.experiments.fields import heading, is_count
from lightning_app.experiments.schema import Experiment, TableSpec, value_name

COLUMN_NAMES = {"trigger": "attack", "ca_top1": "CA top-1", "ca_top5": "CA top-5", "asr": "ASR",
                "before_ca_top1": "CA before", "ca_change": "CA change", "input_ca_top1": "input CA",
                "input_asr": "input ASR", "before_asr": "ASR before", "steps": "steps", "wall_time_s": "wall time (s)",
                "cost_s": "cost (s)", "poison_count": "poisoned pairs", "selected": "chosen run",
                "candidates": "runs chosen from (per seed)"}
"""Headings of the runner's own columns; a module's columns are headed as it declares (`fields.py`)."""
WHOLE_NUMBERS = {"steps", "wall_time_s", "cost_s", "poison_count"}


def is_whole_number(column: str) -> bool:
    return column in WHOLE_NUMBERS or is_count(column)


def column_name(column: str, experiment: Experiment, table: TableSpec) -> str:
    if column == "cost":
        return f"cost (× {experiment.stages[table.reference].label})" if table.reference else "cost"
    if column == "found" and table.select:
        where = table.select["where"]
        return f"seeds with {COLUMN_NAMES.get(where) or heading(where) or where} ≤ {table.select['at_most']:g}"
    if column in COLUMN_NAMES:
        return COLUMN_NAMES[column]
    if column.startswith("input_") and heading(column.removeprefix("input_")) is not None:
        return f"input {heading(column.removeprefix('input_'))}"
    if heading(column) is not None:
        return heading(column)
    score, _, metric = column.partition("_")
    return f"{score} {metric.replace('auroc', 'AUROC')}" if metric else column


def _order(experiment: Experiment, key: str, value: Any) -> int:
    if key == "seed":
        return value
    names = list(experiment.stages) if key == "stage" else list(experiment.axes[key].values)
    return names.index(value) if value in names else len(names)


def group_rows(experiment: Experiment, table: TableSpec, rows: list[dict]) -> dict[tuple, list[dict]]:
    """Rows of the table's stages grouped by its row keys, in the experiment's order of stages and values."""
    stages = table.stages or [name for name, stage in experiment.stages.items() if stage.report]
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["stage"] in stages and wanted(table, row):
            groups[tuple(row.get(key, "–") for key in table.rows)].append(row)
    return dict(sorted(groups.items(), key=lambda item: [_order(experiment, k, v) for k, v in zip(table.rows, item[0])]))


def wanted(table: TableSpec, row: dict) -> bool:
    """Whether the row passes the table's `seeds` and `where` (axes the row does not have do not filter it)."""
    if table.seeds is not None and row["seed"] not in table.seeds:
        return False
    return all(str(row[axis]) in {value_name(v) for v in values} for axis, values in table.where.items() if axis in row)


def run_name(experiment: Experiment, table: TableSpec, row: dict) -> str:
    """What tells a row's runs apart within a table row: its stage (unless a row key) and other axis values."""
    parts = [] if "stage" in table.rows else [experiment.stages[row["stage"]].label]
    parts += [f"{axis} {row[axis]}" for axis in experiment.axes if axis in row and axis not in table.rows]
    return " · ".join(parts) or row["stage"]
