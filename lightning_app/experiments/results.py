"""Results as data first: one long-form row per finished run, and the seeds' intervals over them.

A row holds the run's stage, seed and axis values, CA top-1/top-5, ASR, the CA/ASR of the model at the
run's step 0 (`before_*`: after what loading does, e.g. shrink-and-perturb) and of the model it was given
(`input_*`: its `from` stage's summary), the CA change from the latter (`ca_change`), per-trigger ASR of a multi-trigger attack (`asr_<part>`), a trigger inversion's mask size (`inversion_*`), the oracle finder's finding (`oracle_*`), UBT's set rule (`set_*`), SafeCLIP's last split (`safeclip_*`), RoCLIP's swap sources (`roclip_*`), steps, wall time, cost (its wall time plus that of the stages in its `cost_includes`),
detection metrics where the run has them, its run directory, and where its summary came from (`source`:
the run directory, or the results archive when the directory is not on this machine). `RUNS/results.jsonl` holds every
finished run of the experiment.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scipy import stats

from lightning_app.experiments.archive import Summaries, archive_runs
from lightning_app.experiments.spec import Experiment, StageRun
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
    for name, value in (summary.get("metrics") or {}).items():  # per-trigger ASR; the eval images' cohesion
        if name.startswith(("val/asr_", "val/cohesion_")):
            row[name.removeprefix("val/")] = value
    for name, value in (summary.get("inversion") or {}).items():  # a trigger inversion's detector figures
        row[f"inversion_{name}"] = value
    excluded = summary.get("excluded") or {}  # filter then pretrain: pairs dropped, and poisoned among them
    row["excluded_count"], row["excluded_poisoned"] = excluded.get("count"), excluded.get("poisoned")
    for name, value in (summary.get("detection_cost") or {}).items():  # seconds of the pass and of each ranking
        row[f"cost_{name}"] = value
    for name, value in (summary.get("suspicious_set") or {}).items():  # UBT's set rule: its m, purity, guard
        row[f"set_{name}"] = value
    for name, value in (summary.get("unlearned_by_trigger") or {}).items():  # a multi-trigger attack: whose pairs UBT unlearned
        row[f"unlearned_{name}"] = value
    for name, value in (summary.get("safeclip") or {}).items():  # SafeCLIP's last split: safe pairs, poisoned among them
        row[f"safeclip_{name}"] = value
    for name, value in (summary.get("roclip") or {}).items():  # RoCLIP: poisoned images swapped to poisoned captions
        row[f"roclip_{name}"] = value
    for name, value in (summary.get("oracle") or {}).items():  # the oracle finder's finding
        row[f"oracle_{name}"] = float(value) if isinstance(value, bool) else value
    for score, metrics in (summary.get("detection") or {}).items():
        for metric, value in metrics.items():
            if metric != "num_poisoned" and metric != "num_pairs":
                row[f"{score}_{metric}"] = value
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


@dataclass
class Interval:
    """Mean of n values and a 95% interval: Student's t for n ≥ 3, the min–max range below that."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def kind(self) -> str:
        return "t95" if self.n >= 3 else ("range" if self.n == 2 else "single")

    def separated_from(self, other: "Interval") -> bool:
        """True when the two intervals do not overlap (an ordering a table may claim)."""
        return self.high < other.low or other.high < self.low

    def format(self, digits: int = 3) -> str:
        if self.n == 1:
            return f"{self.mean:.{digits}f}"
        if self.kind == "t95":
            return f"{self.mean:.{digits}f} ± {(self.high - self.mean):.{digits}f}"
        return f"{self.mean:.{digits}f} [{self.low:.{digits}f}–{self.high:.{digits}f}]"


def interval(values: list[float]) -> Interval | None:
    values = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return None
    n = len(values)
    mean = statistics.fmean(values)
    if n < 3:
        return Interval(mean, min(values), max(values), n)
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)
