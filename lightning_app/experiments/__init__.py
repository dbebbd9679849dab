"""Studies as data: experiment files (experiments/*.yaml) expanded into runs over axes and seeds, run one
at a time, and reported with the seeds' intervals. `python -m lightning_app.experiments --help`."""

from lightning_app.experiments.expansion import expand
from lightning_app.experiments.loading import load_experiment
from lightning_app.experiments.planning import plan
from lightning_app.experiments.runner import run_experiment

__all__ = ["expand", "load_experiment", "plan", "run_experiment"]
