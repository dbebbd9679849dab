"""Running an experiment: each run a `main.py fit` in its own process and run directory, reusing finished runs and resuming interrupted ones (lightning_app.pipelines), then the views.

Runs go one chain at a time: a seed's first run (e.g. one attack), then every run made from it, before
the next (`by_chain`), so a study stopped part way leaves whole rows rather than a stage of every row.

With `--jobs N`, up to N runs whose dependencies have finished run at once (`pool.py`). Every study on
a machine shares its slots (`runs/.experiments.slots/`), so two studies started together share the
cores or GPUs instead of oversubscribing them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from lightning_app.experiments.archive import archive_runs
from lightning_app.experiments.docs_blocks import write_views
from lightning_app.experiments.expansion import expand, pipeline_stage
from lightning_app.experiments.pool import run_pool
from lightning_app.experiments.rows import collect
from lightning_app.experiments.schema import Experiment, StageRun
from lightning_app.experiments.slurm import SlurmSettings, make_executor, run_as_job
from lightning_app.export import export_run
from lightning_app.pipelines import REPO_ROOT, run_stage

log = logging.getLogger(__name__)

SLOTS = REPO_ROOT / "runs" / ".experiments.slots"
"""The machine's slots (`pool.py`): every study here shares them."""


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
                   archive: bool = False, drop_rows: bool = False, blocks: list[str] | None = None,
                   jobs: int = 1, devices_per_job: int = 1, slurm: SlurmSettings | None = None) -> list[dict]:
    """Run what is not finished, `jobs` at a time (`pool.py`): on this machine, or with `slurm` each as a job
    through submitit (`slurm.py`). Then write results.jsonl and the views from every finished run (and with
    `archive`, record each run in the experiment's results archive as it finishes).

    A failed run is reported and its dependants skipped; the others go on. Raises at the end if any failed."""
    runs = expand(experiment)

    def finished(run: StageRun) -> None:
        if archive or update_docs:
            # each run as it finishes: an invocation can take hours, and a machine that is lost in them
            # keeps what the archive holds
            archive_runs(experiment, [run])

    if slurm is None:
        start, slots = (lambda run, env: run_stage(pipeline_stage(run), env=env)), SLOTS
    else:  # the cluster schedules the jobs: the slots only bound how many this study has submitted at once
        executor = make_executor(slurm, experiment.runs)
        start, slots = (lambda run, env: run_as_job(executor, pipeline_stage(run), slurm)), \
            Path(experiment.runs) / ".submitit" / "slots"
    failed = run_pool(by_chain(select(experiment, runs, only)), jobs, start, finished, devices_per_job, slots,
                      assign_devices=slurm is None, needs_slot=lambda run: not run.run_dir.is_finished())
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
