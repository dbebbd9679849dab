"""Views of an experiment's long-form results, as its file declares them: markdown tables with the
mean and 95% interval over seeds per cell, a cost column relative to a reference stage, a selection
rule's table (per seed, the best run under a constraint), and a CA-vs-ASR plot (per row with error
bars, or per run). This module writes them: tables go to RUNS/<block>.md and into the declared files' blocks.
A table quoted in a file is replaced only by one that keeps its rows (`--drop-rows` allows fewer).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lightning_app.experiments.comparisons import comparisons, model_detection
from lightning_app.experiments.labels import group_rows
from lightning_app.experiments.plots import ca_vs_asr_plot, runs_plot
from lightning_app.experiments.schema import Experiment
from lightning_app.experiments.tables import render_table, seeds_line, table_note
from lightning_app.report import read_block, write_block


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
