"""Views of an experiment's long-form results, as its file declares them: markdown tables with the
mean and 95% interval over seeds per cell, a cost column relative to a reference stage, a selection
rule's table (per seed, the best run under a constraint), and a CA-vs-ASR plot (per row with error
bars, or per run). Tables go to RUNS/<block>.md and into the declared files' blocks."""

from __future__ import annotations

import os
import shutil
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import matplotlib

from lightning_app.experiments.results import Interval, interval
from lightning_app.experiments.spec import Experiment, TableSpec, value_name
from lightning_app.report import read_block, write_block

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLUMN_NAMES = {"trigger": "attack", "ca_top1": "CA top-1", "ca_top5": "CA top-5", "asr": "ASR", "before_ca_top1": "CA before", "ca_change": "CA change",
                "input_ca_top1": "input CA", "input_asr": "input ASR",
                "before_asr": "ASR before", "steps": "steps", "wall_time_s": "wall time (s)", "cost_s": "cost (s)",
                "poison_count": "poisoned pairs", "inversion_mask_fraction": "inverted mask (fraction of image)",
                "inversion_mask_l1": "inverted mask L1 (px)", "oracle_victim_label": "victim label found",
                "oracle_victim_label_correct": "found the target", "oracle_confidence": "its share of candidates",
                "oracle_mean_iou": "IoU with the trigger", "oracle_transplant_rate": "its region turns",
                "oracle_transplant_runner_up": "best other label's region turns",
                "oracle_collapse": "its region's collapse", "oracle_collapse_runner_up": "best other label's collapse",
                "oracle_pairs_examined": "images examined", "oracle_candidates": "candidate images",
                "oracle_victim_set": "victim samples handed over", "oracle_victim_set_share_poisoned": "their share poisoned",
                "safeclip_safe_pairs": "pairs on the CLIP loss (last epoch)",
                "safeclip_poisoned_in_safe": "poisoned on the CLIP loss",
                "safeclip_first_safe_pairs": "pairs on the CLIP loss (first split)",
                "safeclip_first_poisoned_in_safe": "poisoned among them (first split)",
                "safeclip_scoring_s_total": "SafeCLIP's scoring passes (s)",
                "roclip_poisoned_swapped_to_poisoned": "poisoned images swapped to a poisoned caption", "selected": "chosen run", "candidates": "runs chosen from (per seed)", "set_m": "pairs unlearned",
                "set_true_purity": "their share poisoned", "set_estimated_purity": "estimated purity", "set_guard": "guard",
                "cohesion_triggered": "triggered images' mean cosine", "cohesion_clean": "clean images' mean cosine",
                "excluded_count": "pairs dropped", "excluded_poisoned": "poisoned among them",
                "cost_scoring_pass_s": "scoring pass (s)", "cost_kdist_slof_dao_dense_s": "kdist, SLOF, DAO, dense (s)",
                "cost_gmm_s": "GMM (s)", "cost_cluster_s": "cluster (s)"}
WHOLE_NUMBERS = {"steps", "wall_time_s", "cost_s", "poison_count", "set_m", "excluded_count", "excluded_poisoned",
                 "oracle_pairs_examined", "oracle_candidates", "oracle_victim_set", "safeclip_safe_pairs", "safeclip_poisoned_in_safe",
                 "safeclip_first_safe_pairs", "safeclip_first_poisoned_in_safe"}


def column_name(column: str, experiment: Experiment, table: TableSpec) -> str:
    if column == "cost":
        return f"cost (× {experiment.stages[table.reference].label})" if table.reference else "cost"
    if column == "found" and table.select:
        return f"seeds with {COLUMN_NAMES.get(table.select['where'], table.select['where'])} ≤ {table.select['at_most']:g}"
    if column in COLUMN_NAMES:
        return COLUMN_NAMES[column]
    if column.startswith("asr_"):
        return f"ASR {column.removeprefix('asr_')}"
    if column.startswith("unlearned_"):
        return f"unlearned: {column.removeprefix('unlearned_')}"
    score, _, metric = column.partition("_")
    return f"{score} {metric.replace('auroc', 'AUROC')}" if metric else column


def _order(experiment: Experiment, key: str, value: Any) -> int:
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
    """Whether the row passes the table's `where` (axes the row does not have do not filter it)."""
    return all(str(row[axis]) in {value_name(v) for v in values} for axis, values in table.where.items() if axis in row)


def run_name(experiment: Experiment, table: TableSpec, row: dict) -> str:
    """What tells a row's runs apart within a table row: its stage (unless a row key) and other axis values."""
    parts = [] if "stage" in table.rows else [experiment.stages[row["stage"]].label]
    parts += [f"{axis} {row[axis]}" for axis in experiment.axes if axis in row and axis not in table.rows]
    return " · ".join(parts) or row["stage"]


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
            digits = 0 if column in WHOLE_NUMBERS or column.startswith("unlearned_") else (2 if column == "cost" else 3)
            cells.append("–" if value is None else value if isinstance(value, str) else value.format(digits))
        lines.append("| " + " | ".join(names + [str(len({r['seed'] for r in group}))] + cells) + " |")
    return "\n".join(lines)


def seeds_line(experiment: Experiment, table: TableSpec, rows: list[dict]) -> str:
    """Which seeds the rows' n count, when some row has fewer than the experiment's seeds (a table whose
    runs are still being made, or made on two machines): an n alone does not say which seed a number is."""
    if table.select:
        return ""  # its rows' n are the seeds where a run met the rule, which its `found` column says
    counts = Counter(tuple(sorted({row["seed"] for row in group})) for group in group_rows(experiment, table, rows).values())
    if set(counts) <= {tuple(sorted(experiment.seeds))}:
        return ""
    parts = [f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} ({n} row{'s' if n > 1 else ''})"
             for seeds, n in sorted(counts.items(), key=lambda item: (-len(item[0]), item[0]))]
    return f"Seeds of each row's n (of {', '.join(map(str, sorted(experiment.seeds)))}): " + "; ".join(parts) + "."


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


def table_note(experiment: Experiment, table: TableSpec) -> str:
    note = (f"Written by `python -m lightning_app.experiments run {experiment.path}` from the runs' summary.json "
            f"(`results.jsonl` beside them; runs made on another machine from their records in `{experiment.archive}`): "
            "each cell is the mean over n seeds ± the 95% t-interval's half-width "
            "(n ≥ 3), or [min–max] for n = 2. Two rows are ordered only where their intervals do not overlap, or "
            "where they ran on the same seeds and the interval of their per-seed difference excludes 0.")
    if table.reference and "cost" in table.columns:
        note += (f" Cost: wall time (with the stages each one needs, e.g. ABD's crafting) over "
                 f"{experiment.stages[table.reference].label}'s in the same seed.")
    return note + (f" {table.note.strip()}" if table.note else "")


def _save_ca_asr(fig, axes: list, title: str, path: Path) -> Path:
    """The CA-vs-ASR axes of both plots (the legend beside the last panel) and the title, saved to `path`."""
    for ax in axes:
        ax.set_xlabel("attack success rate (lower is better)")
        ax.set_xlim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("zero-shot clean accuracy, top-1")
    handles: dict[str, Any] = {}  # label → the first panel's handle, so a legend entry shows once
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    axes[-1].legend(handles.values(), handles.keys(), fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def ca_vs_asr_plot(experiment: Experiment, table: TableSpec, rows: list[dict], path: Path) -> Path | None:
    """One point per table row at its mean ASR and CA, with the 95% intervals as error bars."""
    groups = group_rows(experiment, table, rows)
    points = []
    for key, group in groups.items():
        ca, asr = interval([r.get("ca_top1") for r in group]), interval([r.get("asr") for r in group])
        if group[0].get("module") in ("SuspiciousPairDiscovery", "CraftAdversarialPatch"):
            continue  # stages that change no weights of the model they hand on have no CA/ASR of their own
        if ca is not None and asr is not None:
            points.append((key, ca, asr, group[0]["stage"]))
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = {stage: f"C{i % 10}" for i, stage in enumerate(experiment.stages)}
    # one marker per value of the first non-stage row key (e.g. the attack), one colour per stage
    axis = next((k for k in table.rows if k != "stage"), None)
    values = list(dict.fromkeys(key[table.rows.index(axis)] for key, *_ in points)) if axis else []
    for key, ca, asr, stage in points:
        marker = "osD^vP*X"[values.index(key[table.rows.index(axis)]) % 8] if axis else "o"
        label = " · ".join(experiment.stages[v].label if k == "stage" else str(v) for k, v in zip(table.rows, key))
        ax.errorbar([asr.mean], [ca.mean], xerr=[[asr.mean - asr.low], [asr.high - asr.mean]],
                    yerr=[[ca.mean - ca.low], [ca.high - ca.mean]], fmt=marker, color=colours[stage], capsize=3,
                    label=label)
    return _save_ca_asr(fig, [ax], f"{experiment.name}: mean and 95% interval over seeds", path)


def plot_panels(table: TableSpec, points: list[dict]) -> tuple[str | None, list[str]]:
    """The row key a runs plot draws one panel per value of (the first that is neither the stage nor
    `colour_by` and takes more than one value, e.g. the tier: two tiers' runs on one axes mislead), and its values."""
    for key in table.rows:
        values = list(dict.fromkeys(str(r.get(key)) for r in points))
        if key not in ("stage", table.colour_by) and len(values) > 1:
            return key, values
    return None, [""]


def runs_plot(experiment: Experiment, table: TableSpec, rows: list[dict], path: Path) -> Path | None:
    """One point per run of the table's stages at its ASR and CA (Verma et al.'s figure): one colour per
    value of `colour_by` (default the stage), one marker per stage, one panel per value of the key
    `plot_panels` picks, and the selection rule's bound drawn."""
    stages = table.stages or [name for name, stage in experiment.stages.items() if stage.report]
    points = [r for r in rows if r["stage"] in stages and wanted(table, r) and r.get("ca_top1") is not None
              and r.get("asr") is not None]
    if not points:
        return None
    by = table.colour_by or "stage"
    values = list(dict.fromkeys(sorted((str(r.get(by)) for r in points), key=lambda v: _order(experiment, by, v))))
    panel_key, panels = plot_panels(table, points)
    if panel_key is not None:
        panels.sort(key=lambda v: _order(experiment, panel_key, v))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels) + 2.5, 4.5), sharey=True, squeeze=False)
    for ax, panel in zip(axes[0], panels):
        here = [r for r in points if panel_key is None or str(r.get(panel_key)) == panel]
        for i, value in enumerate(values):
            for j, stage in enumerate(stages):
                mine = [r for r in here if str(r.get(by)) == value and r["stage"] == stage]
                if mine:
                    label = " · ".join(dict.fromkeys([experiment.stages[stage].label if by != "stage" else "",
                                                      value])).strip(" ·")
                    ax.scatter([r["asr"] for r in mine], [r["ca_top1"] for r in mine], color=f"C{i % 10}",
                               marker="osD^vP*X"[j % 8], alpha=0.8, label=label)
        if table.select and table.select["where"] == "asr":
            ax.axvline(table.select["at_most"], color="grey", linestyle="--", linewidth=1)
        if panel_key is not None:
            ax.set_title(f"{panel_key} {panel} ({len(here)} runs)", fontsize=9)
    return _save_ca_asr(fig, list(axes[0]), f"{experiment.name}: every run ({len(points)})", path)


def quoted_rows(text: str, width: int) -> dict[tuple[str, ...], int]:
    """The rows of the first markdown table in `text`, as written by render_table: each row's key (its
    first `width` cells) and its n."""
    rows: dict[tuple[str, ...], int] = {}
    for line in text.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) > width and cells[width].isdigit():
            rows[tuple(cells[:width])] = int(cells[width])
    return rows


def dropped_rows(quoted: str, rendered: str, width: int) -> list[str]:
    """The rows a block quotes that a new rendering would lose, or give fewer seeds."""
    before, after = quoted_rows(quoted, width), quoted_rows(rendered, width)
    return [f"{' · '.join(key)}: n = {n} → {after.get(key, 0)}" for key, n in before.items() if after.get(key, 0) < n]


def check_blocks(experiment: Experiment, blocks: list[str] | None) -> None:
    known = [table.block for table in experiment.tables]
    unknown = sorted(set(blocks or []) - set(known))
    if unknown:
        raise ValueError(f"--blocks {unknown}: {experiment.name}'s tables are {known}")


def write_views(experiment: Experiment, rows: list[dict], update_docs: bool = False,
                drop_rows: bool = False, blocks: list[str] | None = None) -> list[Path]:
    """Every declared table into RUNS/<block>.md and its plot (and, with `update_docs`, the table into its
    files' blocks and the plot to `figure`; only the tables named in `blocks` when it is given, so one
    block can be brought up to date while the runs another quotes are on another machine).

    The docs are written only when no block would lose a row it quotes, or seeds of one (their runs are
    neither here nor archived), unless `drop_rows`; RUNS/ is written either way."""
    check_blocks(experiment, blocks)
    written, docs = [], []
    for table in experiment.tables:
        text = table_note(experiment, table) + "\n\n" + render_table(experiment, table, rows)
        if seeds := seeds_line(experiment, table, rows):
            text += "\n\n" + seeds
        compared = comparisons(experiment, table, rows)
        if compared:
            text += ("\n\nOrderings (the first against the second, 95% intervals over seeds; where both sides ran on the "
                     "same seeds, also the 95% interval of their per-seed difference):\n\n" + "\n".join(compared))
        detection = model_detection(experiment, table, rows)
        if detection:
            text += "\n\n" + "\n".join(detection)
        path = Path(experiment.runs) / f"{table.block}.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        written.append(path)
        plot = None
        if table.plot:
            draw = runs_plot if table.plot == "runs" else ca_vs_asr_plot
            plot = draw(experiment, table, rows, Path(experiment.runs) / f"{table.block}.png")
            if plot is not None:
                written.append(plot)
        # a table none of whose stages has run yet stays out of the docs (a header alone says nothing)
        if update_docs and (blocks is None or table.block in blocks) and group_rows(experiment, table, rows):
            docs.append((table, text, plot))
    lost = [f"  {file} [{table.block}] {row}" for table, text, _ in docs for file in table.files
            for row in dropped_rows(read_block(file, table.block) or "", text, len(table.rows))]
    if lost and not drop_rows:
        raise ValueError(f"--update-docs would take rows out of the docs (n = seeds quoted → seeds found here or in "
                         f"{experiment.archive}):\n" + "\n".join(lost) + "\nMake those runs again (or archive them "
                         "where they are), or pass --drop-rows to write the tables without them; the tables are in "
                         f"{experiment.runs}")
    for table, text, plot in docs:
        figure = Path(table.figure) if table.figure and plot is not None else None
        if figure is not None:
            figure.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(plot, figure)
            written.append(figure)
        for file in table.files:
            link = (f"\n\n![{table.block}: CA against ASR]({os.path.relpath(figure, Path(file).parent)})"
                    if figure is not None else "")
            write_block(file, table.block, text + link)
    return written
