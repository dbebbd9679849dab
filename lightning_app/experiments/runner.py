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
import logging
import os
from pathlib import Path

from lightning_app.experiments.archive import archive_runs
from lightning_app.experiments.docs_blocks import write_views
from lightning_app.experiments.expansion import expand, pipeline_stage
from lightning_app.experiments.rows import collect
from lightning_app.experiments.schema import Experiment, StageRun
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
