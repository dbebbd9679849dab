"""Results as data first: one long-form row per finished run, and the seeds' intervals over them.

A row holds the run's stage, seed and axis values, CA top-1/top-5, ASR, the CA/ASR of the model at the
run's step 0 (`before_*`: after what loading does, e.g. shrink-and-perturb) and of the model it was given
(`input_*`: its `from` stage's summary, with its retrieval ASR), the CA change from the latter (`ca_change`), steps, wall time,
cost (its wall time plus that of the stages in its `cost_includes`), the columns the run's module declares
for its summary sections (`fields.py`: per-trigger ASR `asr_<part>`, `inversion_*`, `oracle_*`, `set_*`,
detection metrics, ...), whether its module changes the weights it was given, its run directory, and
where its summary came from (`source`: the run directory, or the results archive when the directory is
not on this machine). `RUNS/results.jsonl` holds every
finished run of the experiment.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lightning_app.experiments.archive import Summaries, archive_runs
from lightning_app.experiments.fields import changes_weights, summary_columns
from lightning_app.experiments.schema import Experiment, StageRun
from lightning_app.report import attack_name

SUMMARY_FIELDS = ("ca_top1", "ca_top5", "asr", "steps", "wall_time_s", "poison_count", "target", "module")


def result_row(experiment: Experiment, run: StageRun, summaries: Summaries) -> dict[str, Any]:
    summary = summaries.get(run)
    assert summary is not None, f"{run.id} has no summary"
    row: dict[str, Any] = {"experiment": experiment.name, "stage": run.stage.name, "label": run.stage.label,
                           "seed": run.seed, "source": summaries.source(run)}
    row.update({key: summary.get(key) for key in SUMMARY_FIELDS})
    before = summary.get("before") or {}  # the model at the run's step 0, after what loading does to it
    row["before_ca_top1"], row["before_asr"] = before.get("ca_top1"), before.get("asr")
    given = summaries.get(run.deps[run.stage.parent]) if run.stage.parent else None
    row["input_ca_top1"], row["input_asr"] = (given.get("ca_top1"), given.get("asr")) if given else (None, None)
    # a retrieval ASR of the model it was given too: a text-side trigger has no other ASR
    row.update({f"input_{column}": value for column, value in (summary_columns(given) if given else {}).items()
                if column.startswith("retrieval/asr")})
    # what a defense cost in CA, fair between poisoned models that start at different CA: from the model it
    # was given, so that a change made on loading (shrink-and-perturb's) counts as the defense's
    start = row["input_ca_top1"] if row["input_ca_top1"] is not None else row["before_ca_top1"]
    if row["ca_top1"] is not None and start is not None:
        row["ca_change"] = row["ca_top1"] - start
    row["trigger"] = attack_name(summary)
    row["cost_s"] = summary.get("wall_time_s")
    for name in run.stage.cost_includes:
        dep = summaries.get(run.deps[name])
        row["cost_s"] = None if row["cost_s"] is None or dep is None else row["cost_s"] + dep["wall_time_s"]
    row.update(summary_columns(summary))  # each module's sections, as it declares them
    row["changes_weights"] = changes_weights(summary.get("module"))
    row["run_dir"] = str(run.run_dir)
    return {**row, **run.axes}


def collect(experiment: Experiment, runs: list[StageRun], archive: bool = False) -> list[dict[str, Any]]:
    """Rows of every finished run (whichever invocation ran it, here or, by its archived record, on another
    machine), written to RUNS/results.jsonl; with `archive`, the runs finished here are archived first."""
    if archive:
        archive_runs(experiment, runs)
    summaries = Summaries(experiment)
    rows = [result_row(experiment, run, summaries) for run in runs if summaries.get(run) is not None]
    path = Path(experiment.runs) / "results.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, sort_keys=True) + "\n" for row in rows))
    return rows
