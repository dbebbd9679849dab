"""What running an experiment would do (`--dry-run`): each run's state (reuse, resume, run, refuse) and an
estimate of the time it takes, from the wall times of its stage's runs here or in the archive.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from lightning_app.config_values import config_values
from lightning_app.experiments.archive import Summaries, made_here_by_this_config
from lightning_app.experiments.expansion import expand, pipeline_stage
from lightning_app.experiments.pool import waves
from lightning_app.experiments.runner import by_chain, select
from lightning_app.experiments.schema import Experiment, StageRun


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


def plan(experiment: Experiment, only: list[str] | None = None, jobs: int = 1) -> str:
    """Every run with what running would do to it, and the estimated time; with `jobs` > 1, the waves of
    runs that would start together and the time at that many jobs."""
    lines = []
    summaries = Summaries(experiment)
    to_run, same_run, same_stage, archived = 0, [], [], archived_wall_times(summaries)
    estimates: dict[str, float | None] = {}
    chain = by_chain(select(experiment, expand(experiment), only))
    for run in chain:
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
            estimates[run.id] = estimate
    if to_run:
        lines.append(_estimate_line(to_run, same_run, same_stage))
    if to_run and jobs > 1:
        lines += _waves_lines([run for run in chain if run.id in estimates], jobs, estimates)
    return "\n".join(lines)


def _waves_lines(runs: list[StageRun], jobs: int, estimates: dict[str, float | None]) -> list[str]:
    """The waves of runs that start together at `jobs`, and the time: each wave as long as its longest run."""
    lines, total, known = [], 0.0, True
    for number, wave in enumerate(waves(runs, jobs), start=1):
        lines.append(f"wave {number}: {', '.join(wave)}")
        times = [estimates[run_id] for run_id in wave]
        known = known and None not in times
        total += max((t for t in times if t is not None), default=0.0)
    lines.append(f"at --jobs {jobs}: about {_duration(total)} in {number} waves"
                 + ("" if known else " (runs with nothing finished to tell counted as 0)"))
    return lines


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
