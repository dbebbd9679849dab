"""An experiment's markdown tables: per cell the mean and 95% interval over seeds, a cost column relative
to a reference stage, and a selection rule's table (per seed, the best run under a constraint).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from lightning_app.experiments.labels import column_name, group_rows, is_whole_number, run_name
from lightning_app.experiments.schema import Experiment, TableSpec
from lightning_app.experiments.statistics import Interval, interval


def select(table: TableSpec, group: list[dict]) -> list[dict]:
    """Per seed, the group's run with the highest `maximise` among those with `where` ≤ `at_most`."""
    rule, best = table.select, {}
    for row in group:
        value, constrained = row.get(rule["maximise"]), row.get(rule["where"])
        if value is None or constrained is None or constrained > rule["at_most"]:
            continue
        if row["seed"] not in best or value > best[row["seed"]][rule["maximise"]]:
            best[row["seed"]] = row
    return [best[seed] for seed in sorted(best)]


def cost_ratios(experiment: Experiment, table: TableSpec, group: list[dict], rows: list[dict]) -> list[float]:
    """Per seed, the group's cost over the reference stage's cost in the same seed and axis values."""
    ratios = []
    for row in group:
        for ref in rows:
            if ref["stage"] != table.reference or ref["seed"] != row["seed"]:
                continue
            shared = [a for a in experiment.axes if a in ref and a in row]
            if all(ref[a] == row[a] for a in shared) and ref.get("cost_s") and row.get("cost_s") is not None:
                ratios.append(row["cost_s"] / ref["cost_s"])
                break
    return ratios


def cell(experiment: Experiment, table: TableSpec, column: str, group: list[dict], rows: list[dict],
         pool: list[dict] | None = None) -> Interval | str | None:
    """The column's interval over the group's seeds; for a text column (e.g. `trigger`), its value(s).
    Under a selection rule `group` is the chosen runs and `pool` every run they were chosen from."""
    if column == "found":
        return f"{len(group)}/{len({r['seed'] for r in pool or group})}"
    if column == "candidates":  # a seed whose grid is not finished was chosen from fewer runs: say so
        per_seed = Counter(r["seed"] for r in pool or group).values()
        return f"{min(per_seed)}" if min(per_seed) == max(per_seed) else f"{min(per_seed)}–{max(per_seed)}"
    if column == "selected":
        return " / ".join(sorted({run_name(experiment, table, r) for r in group})) or "none"
    if column == "cost":
        return interval(cost_ratios(experiment, table, group, rows)) if table.reference else None
    values = [row.get(column) for row in group]
    if any(isinstance(v, str) for v in values):
        return " / ".join(sorted({str(v) for v in values}))
    return interval(values)


def render_table(experiment: Experiment, table: TableSpec, rows: list[dict]) -> str:
    groups = group_rows(experiment, table, rows)
    heads = [("stage" if key == "stage" else key) for key in table.rows]
    lines = ["| " + " | ".join(heads + ["n"] + [column_name(c, experiment, table) for c in table.columns]) + " |",
             "|" + "---|" * len(heads) + "---:|" + "---:|" * len(table.columns)]
    for key, pool in groups.items():
        group = select(table, pool) if table.select else pool
        names = [experiment.stages[v].label if k == "stage" else str(v) for k, v in zip(table.rows, key)]
        cells = []
        for column in table.columns:
            value = cell(experiment, table, column, group, rows, pool)
            digits = 0 if is_whole_number(column) else (2 if column == "cost" else 3)
            cells.append("–" if value is None else value if isinstance(value, str) else value.format(digits))
        lines.append("| " + " | ".join(names + [str(len({r['seed'] for r in group}))] + cells) + " |")
    return "\n".join(lines)


def seeds_line(experiment: Experiment, table: TableSpec, rows: list[dict]) -> str:
    """Which seeds the rows' n count, when some row has fewer than the experiment's seeds (a table whose
    runs are still being made, or made on two machines): an n alone does not say which seed a number is."""
    if table.select or "seed" in table.rows:  # under a rule, n is the seeds where a run met it (`found`
        return ""  # says so); a row per seed names its seed
    counts = Counter(tuple(sorted({row["seed"] for row in group})) for group in group_rows(experiment, table, rows).values())
    if set(counts) <= {tuple(sorted(experiment.seeds))}:
        return ""
    parts = [f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} ({n} row{'s' if n > 1 else ''})"
             for seeds, n in sorted(counts.items(), key=lambda item: (-len(item[0]), item[0]))]
    return f"Seeds of each row's n (of {', '.join(map(str, sorted(experiment.seeds)))}): " + "; ".join(parts) + "."


def table_note(experiment: Experiment, table: TableSpec) -> str:
    """What the table is made from and how to read it: with one seed, the runs' own values; with more, the
    intervals and the rule for an ordering. The archive is named only where there is one."""
    source = f"Written by `python -m lightning_app.experiments run {experiment.path}` from the runs' summary.json"
    if Path(experiment.archive).exists():
        source += f" (runs made on another machine: from their records in `{experiment.archive}`)"
    if len(experiment.seeds) == 1:
        note = source + f", one seed ({experiment.seeds[0]}): each cell is that run's value, with no interval."
    else:
        note = (source + ": each cell is the mean over n seeds ± the 95% t-interval's half-width (n ≥ 3), or "
                "[min–max] for n = 2. Two rows are ordered only where their intervals do not overlap, or where "
                "they ran on the same seeds and the interval of their per-seed difference excludes 0.")
    if table.reference and "cost" in table.columns:
        note += (f" Cost: wall time (with the stages each one needs, e.g. ABD's crafting) over "
                 f"{experiment.stages[table.reference].label}'s in the same seed.")
    return note + (f" {table.note.strip()}" if table.note else "")
