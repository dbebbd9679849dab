"""Run a study from its experiment file, from the repository root:

    python -m lightning_app.experiments run experiments/defenses.yaml [--dry-run] [--only STAGE...]
        [--seeds N...] [--where AXIS=VALUE[,VALUE...]...]   (the tables then cover those runs only)
    python -m lightning_app.experiments report experiments/defenses.yaml [--seeds ...] [--where ...]   # no training

`run` trains what is not finished (`--jobs N` at a time, each in its own process; with `--launcher slurm`
each as a SLURM job through submitit: lightning_app.experiments.slurm), reuses finished runs,
resumes interrupted ones, then writes RUNS/results.jsonl, the tables (RUNS/<block>.md) and the CA-vs-ASR
plots (RUNS/<block>.png). `--dry-run` prints every run, its directory, whether it would be reused,
resumed or run, and an estimate of the time the rest takes. `--archive` records each run as it finishes
in results/NAME.jsonl; `--update-docs` does that and writes the tables into README.md / docs/
(maintainers; what a user runs stays in the runs directory), but not if a block would lose a row it
quotes, or seeds of one, unless `--drop-rows`; `--blocks B...` writes only those tables. Runs not on
this machine are reported from that archive while it still matches the experiment
(lightning_app.experiments.archive).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lightning_app.experiments.docs_blocks import check_blocks, write_views
from lightning_app.experiments.expansion import expand, restrict_axes
from lightning_app.experiments.loading import load_experiment
from lightning_app.experiments.planning import plan
from lightning_app.experiments.rows import collect
from lightning_app.experiments.runner import run_experiment
from lightning_app.experiments.slurm import SlurmSettings

SLURM_OPTIONS = [
    ("partition", str, "SLURM partition"), ("time_min", int, "time limit of a job, minutes (requeued past it)"),
    ("gpus_per_node", int, "GPUs and tasks per node of a stage whose config leaves trainer.devices auto "
                           "(nodes: the stage's trainer.num_nodes)"),
    ("cpus_per_task", int, "CPUs per task"), ("mem_gb", int, "memory per node, GB"), ("account", str, "SLURM account"),
    ("qos", str, "SLURM QOS"), ("constraint", str, "SLURM constraint"),
    ("executor", str, "slurm (default), or local/debug: submitit's executors on this machine"),
]


def slurm_settings(experiment, args: argparse.Namespace) -> SlurmSettings:
    """The experiment's `launcher:` block, with the command line's options over it."""
    given = {name: getattr(args, f"slurm_{name}") for name, _, _ in SLURM_OPTIONS
             if getattr(args, f"slurm_{name}") is not None}
    return SlurmSettings.from_mapping({**experiment.launcher, **given}, f"{experiment.path} launcher / command line")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightning_app.experiments", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("experiment", help="the experiment file (experiments/NAME.yaml)")
    parser.add_argument("--only", nargs="+", metavar="STAGE", help="run only these stages (and what they need)")
    parser.add_argument("--where", nargs="+", default=[], metavar="AXIS=VALUES",
                        help="only these values of an axis (comma-separated), e.g. --where attack=badnet,blended")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run up to N runs at once whose dependencies have finished (every study on the machine "
                             "shares N slots: runs/.experiments.slots/)")
    parser.add_argument("--devices-per-job", type=int, default=1, metavar="K",
                        help="GPUs each run gets (slot i: visible GPUs i·K..i·K+K-1, as CUDA_VISIBLE_DEVICES)")
    parser.add_argument("--launcher", choices=["local", "slurm"], default="local",
                        help="local: on this machine (--jobs slots); slurm: each run a SLURM job through submitit, "
                             "with the experiment's `launcher:` block and the options below")
    slurm = parser.add_argument_group("--launcher slurm (over the experiment's launcher: block)")
    for name, kind, help_text in SLURM_OPTIONS:
        slurm.add_argument(f"--{name.replace('_', '-')}", dest=f"slurm_{name}", type=kind, help=help_text,
                           metavar=name.upper())
    parser.add_argument("--seeds", type=int, nargs="+", help="only these of the experiment's seeds")
    parser.add_argument("--archive", action="store_true",
                        help="record the runs finished here in results/NAME.jsonl, which reports read on checkouts "
                             "without their run directories (maintainers)")
    parser.add_argument("--update-docs", action="store_true",
                        help="also write the tables into the blocks of README.md / docs/ the file names; implies "
                             "--archive (maintainers)")
    parser.add_argument("--drop-rows", action="store_true",
                        help="let --update-docs take out rows (or seeds of rows) the docs quote whose runs are neither "
                             "here nor archived; without it such an update is refused and names them")
    parser.add_argument("--blocks", nargs="+", metavar="BLOCK",
                        help="let --update-docs write only these tables (by block name), e.g. one whose runs were made "
                             "here while the runs other blocks quote are archived elsewhere")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    archive = args.archive or args.update_docs  # what the docs quote must be made again elsewhere
    try:
        experiment = load_experiment(args.experiment)
        if args.seeds:
            unknown = sorted(set(args.seeds) - set(experiment.seeds))
            if unknown:
                raise ValueError(f"--seeds {unknown}: the experiment's seeds are {experiment.seeds}")
            experiment.seeds = args.seeds
        restrict_axes(experiment, args.where)
        check_blocks(experiment, args.blocks)  # before hours of runs, not after
        if args.jobs < 1 or args.devices_per_job < 1:
            raise ValueError(f"--jobs and --devices-per-job must be ≥ 1, got {args.jobs} and {args.devices_per_job}")
        settings = slurm_settings(experiment, args) if args.launcher == "slurm" else None
        if args.dry_run:
            print(plan(experiment, args.only, args.jobs))
            return 0
        if args.command == "report":
            paths = write_views(experiment, collect(experiment, expand(experiment), archive=archive),
                                args.update_docs, args.drop_rows, args.blocks)
        else:
            run_experiment(experiment, args.only, args.update_docs, archive, args.drop_rows, args.blocks,
                           jobs=args.jobs, devices_per_job=args.devices_per_job, slurm=settings)
            paths = []
    except (ValueError, RuntimeError) as exn:
        print(f"error: {exn}", file=sys.stderr)
        return 1
    for table in experiment.tables:
        print(f"\n{(Path(experiment.runs) / f'{table.block}.md').read_text()}")
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
