"""The orderings a table may claim: two rows are ordered only where their seeds' intervals separate (or
their paired per-seed differences' interval excludes 0), and a detector's AUROC over the models.
"""

from __future__ import annotations

from lightning_app.experiments.labels import column_name, group_rows
from lightning_app.experiments.schema import Experiment, TableSpec
from lightning_app.experiments.statistics import interval
from lightning_app.experiments.tables import select


def paired_differences(first: list[dict], second: list[dict], field_name: str) -> list[float] | None:
    """The per-seed differences first − second on `field_name`, when each side has one value a seed and at
    least 3 seeds are shared (runs from the same seed's model differ by less than the models do, which
    the two sides' own intervals both count)."""
    def by_seed(group: list[dict]) -> dict[int, float] | None:
        values = {row["seed"]: row.get(field_name) for row in group}
        if len(values) != len(group) or any(value is None for value in values.values()):
            return None
        return values

    a, b = by_seed(first), by_seed(second)
    shared = sorted(set(a) & set(b)) if a is not None and b is not None else []
    return [a[seed] - b[seed] for seed in shared] if len(shared) >= 3 else None


def comparison_context(experiment: Experiment, table: TableSpec, key: tuple, at: int) -> str:
    """What a compared pair shares, e.g. "hard · mmcl" or "hard · CleanCLIP · cleaning lr5e-4": the stage by
    its label, and the axes after it (settings of that stage) by name, which a bare value would not say."""
    after_stage = table.rows.index("stage") if "stage" in table.rows else len(table.rows)
    parts = []
    for i, (name, value) in enumerate(zip(table.rows, key)):
        if i == at or value == "–":
            continue
        parts.append(experiment.stages[value].label if name == "stage"
                     else f"{name} {value}" if i > after_stage else str(value))
    return " · ".join(parts)


def comparisons(experiment: Experiment, table: TableSpec, rows: list[dict]) -> list[str]:
    """For each declared pair [A, B] of `compare_axis` values and each row of A, the row of B with the same
    other keys: on each `compare_on` field, whether the seeds' 95% t-intervals separate them (and which
    way) or not, and, where both sides have a run on the same 3 or more seeds, whether the interval of
    the per-seed differences excludes 0 (and on how many seeds A is lower, and higher). With fewer than 3
    seeds on either side there is no interval to speak of, and no ordering is claimed. Under a selection
    rule the chosen runs are compared."""
    if not table.compare:
        return []
    groups = group_rows(experiment, table, rows)
    if table.select:
        groups = {key: select(table, group) for key, group in groups.items()}
    at = table.rows.index(table.compare_axis)
    lines = []
    for first, second in table.compare:
        for key, group in groups.items():
            if key[at] != first:
                continue
            other = groups.get(key[:at] + (second,) + key[at + 1:])
            if other is None:
                continue
            context = comparison_context(experiment, table, key, at)
            if table.select and (not group or not other):
                lines.append(f"- {context + ': ' if context else ''}{second if group else first} has no run "
                             "meeting the rule in any seed: no ordering claimed")
                continue
            for field_name in table.compare_on:
                a, b = interval([r.get(field_name) for r in group]), interval([r.get(field_name) for r in other])
                if a is None or b is None:
                    continue
                if min(a.n, b.n) < 3:
                    verdict = "fewer than 3 seeds: no ordering claimed"
                elif a.separated_from(b):
                    verdict = f"{'lower' if a.mean < b.mean else 'higher'}, separated"
                else:
                    verdict = "not separated"
                differences = paired_differences(group, other, field_name)
                if differences is not None:
                    difference = interval(differences)
                    excluded = difference.high < 0 or difference.low > 0
                    # the direction seed by seed, which an interval over 3 seeds can hide
                    lower, higher = sum(d < 0 for d in differences), sum(d > 0 for d in differences)
                    verdict += (f"; paired by seed, the difference {difference.format()} (n = {difference.n}; lower on "
                                f"{lower}, higher on {higher}): "
                                + (f"{'lower' if difference.mean < 0 else 'higher'}, its interval excludes 0"
                                   if excluded else "its interval includes 0"))
                name_a, name_b = ((experiment.stages[first].label, experiment.stages[second].label)
                                  if table.compare_axis == "stage" else (first, second))
                lines.append(f"- {context + ': ' if context else ''}{column_name(field_name, experiment, table)} of "
                             f"{name_a} {a.format()} vs {name_b} {b.format()} (n = {a.n}, {b.n}): {verdict}")
    return lines


def detector_auroc(poisoned: list[float], clean: list[float], poisoned_when: str) -> float:
    """The share of (poisoned, clean) model pairs the score orders the right way (ties count a half)."""
    sign = -1.0 if poisoned_when == "lower" else 1.0
    wins = sum(1.0 if sign * p > sign * c else 0.5 if p == c else 0.0 for p in poisoned for c in clean)
    return wins / (len(poisoned) * len(clean))


def model_detection(experiment: Experiment, table: TableSpec, rows: list[dict]) -> list[str]:
    """For each row of a stage other than the detector's clean one, and for all of them together, the
    AUROC of the detector's score between those models and the clean stage's."""
    if not table.detector:
        return []
    score, clean_stage = table.detector["score"], table.detector["clean"]
    groups = group_rows(experiment, table, rows)
    at = table.rows.index("stage")
    values = {key: [r[score] for r in group if r.get(score) is not None] for key, group in groups.items()}
    clean = [v for key, vs in values.items() if key[at] == clean_stage for v in vs]
    poisoned = {key: vs for key, vs in values.items() if key[at] != clean_stage and vs}
    if not clean or not poisoned:
        return []
    name, when = column_name(score, experiment, table), table.detector["poisoned_when"]
    lines = [f"- {' · '.join(str(v) for i, v in enumerate(key) if i != at) + ' · ' if len(key) > 1 else ''}"
             f"{experiment.stages[key[at]].label} against {experiment.stages[clean_stage].label}: "
             f"{detector_auroc(vs, clean, when):.3f} ({len(vs)} and {len(clean)} models)" for key, vs in poisoned.items()]
    everything = [v for vs in poisoned.values() for v in vs]
    lines.append(f"- every poisoned model above against {experiment.stages[clean_stage].label}: "
                 f"{detector_auroc(everything, clean, when):.3f} ({len(everything)} and {len(clean)} models)")
    return [f"AUROC of {name} as a detector of the poisoned model ({when} means poisoned; 0.5 is chance):", ""] + lines
