"""An experiment's plots: CA against ASR per table row (means with 95% intervals as error bars), or per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: plots are files
import matplotlib.pyplot as plt  # noqa: E402

from lightning_app.experiments.labels import _order, group_rows, wanted
from lightning_app.experiments.schema import Experiment, TableSpec
from lightning_app.experiments.statistics import interval


def _save_ca_asr(fig, axes: list, title: str, path: Path) -> Path:
    """The CA-vs-ASR axes of both plots (the legend beside the last panel) and the title, saved to `path`."""
    for ax in axes:
        ax.set_xlabel("attack success rate (lower is better)")
        ax.set_xlim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("zero-shot clean accuracy, top-1")
    for ax in axes:  # at least 0.2 of CA tall, so that a 1-point difference does not fill the height
        low, high = ax.get_ylim()
        if high - low < 0.2:
            high = min(1.02, low + 0.2)
            ax.set_ylim(high - 0.2, high)
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


def plot_title(experiment: Experiment) -> str:
    """What the points are: one run each (one seed), or means with their 95% intervals."""
    if len(experiment.seeds) == 1:
        return f"{experiment.name}: one seed ({experiment.seeds[0]}), each point a run"
    return f"{experiment.name}: mean and 95% interval over seeds"


def ca_vs_asr_plot(experiment: Experiment, table: TableSpec, rows: list[dict], path: Path) -> Path | None:
    """One point per table row at its mean ASR and CA, with the 95% intervals as error bars."""
    groups = group_rows(experiment, table, rows)
    points = []
    for key, group in groups.items():
        ca, asr = interval([r.get("ca_top1") for r in group]), interval([r.get("asr") for r in group])
        if not group[0].get("changes_weights", True):
            continue  # a stage that hands on the weights it was given has no CA/ASR of its own
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
    return _save_ca_asr(fig, [ax], plot_title(experiment), path)


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
