"""Running an experiment: each run a `main.py fit` in its own process and run directory, one at a
time, reusing finished runs and resuming interrupted ones (lightning_app.pipelines), then the views.

Runs go one chain at a time: a seed's first run (e.g. one attack), then every run made from it, before
the next (`by_chain`), so a study stopped part way leaves whole rows rather than a stage of every row.

Only one experiment trains at a time on a machine: a second invocation waits for the first's lock
(`runs/.experiments.lock`), so two studies started together run one after the other instead of
sharing the cores.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import statistics
from pathlib import Path

from lightning_app.config_values import config_values
from lightning_app.experiments.archive import Summaries, archive_runs, made_here_by_this_config
from lightning_app.experiments.results import collect
from lightning_app.experiments.spec import Experiment, StageRun, expand, pipeline_stage
from lightning_app.experiments.views import write_views
from lightning_app.export import export_run
from lightning_app.pipelines import REPO_ROOT, run_stage

log = logging.getLogger(__name__)

LOCK = REPO_ROOT / "runs" / ".experiments.lock"


@contextlib.contextmanager
def machine_lock(path: Path | None = None):
    path = path or LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            log.info("another experiment is running (%s); waiting for it to finish", handle.read().strip() or "?")
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def select(experiment: Experiment, runs: list[StageRun], only: list[str] | None) -> list[StageRun]:
    """The runs of the named stages and every run they depend on (in expansion order); all without `only`."""
    if not only:
        return runs
    unknown = sorted(set(only) - set(experiment.stages))
    if unknown:
        raise ValueError(f"--only: unknown stage(s) {unknown}; the experiment's stages are {sorted(experiment.stages)}")
    wanted = {run.id for run in runs if run.stage.name in only}
    absent = sorted(set(only) - {run.stage.name for run in runs if run.id in wanted})
    if absent:
        where = {name: experiment.stages[name].where for name in absent}
        message = f"--only: stage(s) {absent} have no runs at the chosen axis values and seeds (their `where`: {where})"
        if not wanted:
            raise ValueError(message)
        log.warning(message)
    wanted |= {dep.id for run in runs if run.id in wanted for dep in run.deps.values()}
    return [run for run in runs if run.id in wanted]


def by_chain(runs: list[StageRun]) -> list[StageRun]:
    """The runs in the order they are run: by seed, then by the chain each belongs to, named by the last
    (in `runs`' order) of the runs without dependencies it is made from, and in `runs`' order within a
    chain. `runs` lists every run after its dependencies, and so does the result: a run's roots are among
    its dependants' roots, so its chain is never later than theirs."""
    index = {run.id: i for i, run in enumerate(runs)}

    def chain(run: StageRun) -> int:
        roots = [dep for dep in run.deps.values() if not dep.deps] or [run]
        return max(index[root.id] for root in roots)

    seeds = list(dict.fromkeys(run.seed for run in runs))
    return sorted(runs, key=lambda run: (seeds.index(run.seed), chain(run), index[run.id]))


def status(run: StageRun) -> str:
    """What running would do: reuse (finished), resume (checkpoints, no summary), run, or refuse (another
    config, or made from an input that was made again since)."""
    if run.run_dir.is_finished() or run.run_dir.has_checkpoints():
        recorded = run.run_dir.path / "stage.json"
        if not recorded.exists():
            return "refuse (a run without stage.json)"
        if not made_here_by_this_config(run):
            fingerprint = json.loads(recorded.read_text())
            if not pipeline_stage(run).made_by(fingerprint):
                return "refuse (made by another config or overrides)"
            return "refuse (an input was made again after it)"
        return "reuse" if run.run_dir.is_finished() else "resume"
    return "run"


def plan(experiment: Experiment, only: list[str] | None = None) -> str:
    lines = []
    summaries = Summaries(experiment)
    to_run, same_run, same_stage, archived = 0, [], [], archived_wall_times(summaries)
    for run in by_chain(select(experiment, expand(experiment), only)):
        waits = [d.stage.name for d in run.deps.values() if not d.run_dir.is_finished()]
        state = status(run)
        line = f"{state:<10} {run.id:<45} {run.run_dir}  ({run.config})"
        if waits:
            line += f"  after {', '.join(sorted(waits))}"
        if summaries.source(run) == "archive":
            line += f"  (reported from {experiment.archive} until then)"
        lines.append(line)
        if state in ("run", "resume"):
            to_run += 1
            estimate = wall_time_elsewhere(run, archived)
            if estimate is not None:
                same_run.append(estimate)
            elif (estimate := wall_time_of_stage(run, archived)) is not None:
                same_stage.append(estimate)
    if to_run:
        lines.append(_estimate_line(to_run, same_run, same_stage))
    return "\n".join(lines)


def _estimate_line(to_run: int, same_run: list[float], same_stage: list[float]) -> str:
    unknown = to_run - len(same_run) - len(same_stage)
    if not same_run and not same_stage:
        return f"to run or resume: {to_run} runs, none finished at another seed to estimate its time from"
    parts = []
    if same_run:
        parts.append(f"{len(same_run)} from the same run at other seeds")
    if same_stage:
        parts.append(f"{len(same_stage)} from the same stage at other axis values, a rougher guess")
    line = (f"to run or resume: {to_run} runs, about {_duration(sum(same_run) + sum(same_stage))} of fitting (each "
            f"a median wall time, here or archived: {' and '.join(parts)})")
    return line + (f", and {unknown} with nothing finished to tell" if unknown else "")


Timings = dict[str, dict[str, tuple[float | None, int | None]]]
"""(wall time in seconds, epochs) of finished runs, by each run's parent directory, then its run directory."""


def _timing(summary: dict) -> tuple[float | None, int | None]:
    return summary.get("wall_time_s"), summary.get("epochs")


def wall_time_elsewhere(run: StageRun, archived: Timings) -> float | None:
    """The median wall time of the same run (stage and axis values) finished at other seeds, from the run
    directories beside its own (runs/STAGE/AXES/seedN) and the archive's records of them (`archived`)."""
    times = dict(archived.get(str(run.run_dir.path.parent), {}))
    for other in run.run_dir.path.parent.glob("seed*/summary.json"):
        times[str(other.parent)] = _timing(json.loads(other.read_text()))
    times.pop(str(run.run_dir.path), None)
    values = [float(t) for t, _ in times.values() if t is not None]
    return statistics.median(values) if values else None


def wall_time_of_stage(run: StageRun, archived: Timings) -> float | None:
    """The median wall time of the run's stage at any axis values and seeds (runs/STAGE/*/seedN), each scaled
    to the run's epochs where both say how many: a guess for a run that has not finished at any seed, rough
    where an axis changes the data or the batch size."""
    if not run.axes:
        return None  # the stage has one run a seed, so wall_time_elsewhere already looked at all of them
    stage_dir = run.run_dir.path.parent.parent
    times = {key: timing for parent, records in archived.items() if Path(parent).parent == stage_dir
             for key, timing in records.items()}
    for other in stage_dir.glob("*/seed*/summary.json"):
        times[str(other.parent)] = _timing(json.loads(other.read_text()))
    epochs = planned_epochs(run)
    values = [float(t) * (epochs / done if epochs and done else 1.0) for t, done in times.values() if t is not None]
    return statistics.median(values) if values else None


def planned_epochs(run: StageRun) -> int | None:
    """trainer.max_epochs as the run will have it: its own setting, else its config files' (None if neither)."""
    if "trainer.max_epochs" in run.settings:
        return int(run.settings["trainer.max_epochs"])
    epochs = config_values(run.config).get("trainer.max_epochs")
    return int(epochs) if epochs is not None else None


def archived_wall_times(summaries: Summaries) -> Timings:
    archived: Timings = {}
    for key, record in summaries.records.items():
        archived.setdefault(str(Path(key).parent), {})[key] = _timing(record["summary"])
    return archived


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def run_experiment(experiment: Experiment, only: list[str] | None = None, update_docs: bool = False,
                   archive: bool = False, drop_rows: bool = False, blocks: list[str] | None = None) -> list[dict]:
    """Run what is not finished, then write results.jsonl and the views from every finished run (and with
    `archive`, record each run in the experiment's results archive as it finishes).

    A failed run is reported and its dependants skipped; the others go on. Raises at the end if any failed."""
    runs = expand(experiment)
    failed: dict[str, str] = {}
    with machine_lock():
        for run in by_chain(select(experiment, runs, only)):
            broken = [d.id for d in run.deps.values() if d.id in failed]
            if broken:
                failed[run.id] = f"skipped: {broken[0]} failed"
                log.error("[%s] %s", run.id, failed[run.id])
                continue
            try:
                run_stage(pipeline_stage(run))
            except (RuntimeError, ValueError) as exn:
                failed[run.id] = str(exn)
                log.error("[%s] %s", run.id, exn)
                continue
            if archive or update_docs:
                # each run as it finishes: an invocation can take hours, and a machine that is lost in them
                # keeps what the archive holds
                archive_runs(experiment, [run])
    rows = collect(experiment, runs, archive=archive or update_docs)
    for path in write_views(experiment, rows, update_docs, drop_rows, blocks):
        log.info("wrote %s", path)
    for run in runs:
        if run.stage.name in experiment.exports and run.run_dir.is_finished():
            # the run directory's path below RUNS, e.g. attack/seed0 → exports/attack/seed0
            export_run(run.run_dir.path, Path(experiment.runs) / "exports" / run.run_dir.path.relative_to(experiment.runs))
    if failed:
        raise RuntimeError("failed runs:\n" + "\n".join(f"  {k}: {v}" for k, v in failed.items()))
    return rows
