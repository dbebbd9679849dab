"""Runs of a study as SLURM jobs through submitit: `run FILE --launcher slurm`.

Each run is one job, submitted once every run it needs has finished (the runner waits on the parents'
job states), up to `--jobs` at a time. The job runs the run's `main.py fit` as a child process:

- **Resources.** A job has the stage's `trainer.num_nodes` nodes (Lightning's default: 1) and one task per
  device: the stage's `trainer.devices` where its config fixes a number, else (`auto`) the launcher's
  `gpus_per_node`. Lightning's SLURM environment then picks the ranks up from SLURM's variables, as it does
  under `srun`. Nodes come from the config only: Lightning refuses a job whose node count differs from
  `trainer.num_nodes`, and devices and nodes set the global batch, which is part of what made a run.
- **Preemption and time limits.** SLURM signals the job (submitit asks for `USR2`, `signal_delay_s`
  before the end). The job forwards `SIGUSR1` to its fit, whose training guard saves a step checkpoint
  and exits. The job is then requeued, and the run resumes with `--ckpt_path last` (`pipelines.run_stage`
  adds it when the run has checkpoints).
- **Records.** The job's id and its stdout/stderr files are written to `RUN/launcher.json`, one entry
  per submission.

Settings come from the experiment's `launcher:` block and from the command line, which wins:

    launcher: {partition: gpu, time_min: 720, gpus_per_node: 8, cpus_per_task: 10, mem_gb: 200,
               account: mylab, additional: {exclusive: true}}

    python -m lightning_app.experiments run experiments/defenses.yaml --launcher slurm --partition gpu --jobs 32

`executor: local` (or `debug`) runs the same jobs with submitit's local executor on this machine, which is
how the tests exercise this path.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from lightning_app.config_values import config_values
from lightning_app.pipelines import REPO_ROOT, Stage, run_stage

log = logging.getLogger(__name__)

FORWARDED_SIGNAL = signal.SIGUSR1
"""What a job sends its fit on preemption or time-out: the training guard saves a step checkpoint on it."""


@dataclass
class SlurmSettings:
    """How each run of a study is submitted (submitit's `slurm_*` parameters)."""

    partition: Optional[str] = None
    """SLURM partition."""
    time_min: int = 240
    """Time limit of a job, minutes. A run that needs longer is requeued at the limit and resumes."""
    gpus_per_node: int = 1
    """GPUs (and tasks) per node of a stage whose config leaves `trainer.devices` to `auto`."""
    cpus_per_task: Optional[int] = None
    """CPUs per task (per device), for its data workers."""
    mem_gb: Optional[int] = None
    """Memory per node, GB."""
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    additional: dict[str, Any] = field(default_factory=dict)
    """Other sbatch options, as submitit's `slurm_additional_parameters`."""
    signal_delay_s: int = 120
    """How long before the time limit SLURM signals the job (time to save a step checkpoint)."""
    max_requeues: int = 10
    """How often a run may be requeued after a time-out before it counts as failed."""
    executor: Literal["slurm", "local", "debug"] = "slurm"
    """`local`/`debug`: submitit's executors on this machine (tests; no SLURM needed). The local executor
    signals a job 30 s before its time limit (submitit's default), whatever `signal_delay_s` says."""
    folder: Optional[str] = None
    """submitit's job folder (scripts, pickles, logs); default RUNS/.submitit."""

    @classmethod
    def from_mapping(cls, values: dict, where: str) -> "SlurmSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"{where}: unknown launcher key(s) {unknown}; known: {sorted(names)}")
        settings = cls(**values)
        if settings.executor not in ("slurm", "local", "debug"):
            raise ValueError(f"{where}: launcher executor {settings.executor!r} is not slurm, local or debug")
        if settings.time_min < 1 or settings.gpus_per_node < 0:
            raise ValueError(f"{where}: launcher time_min ≥ 1 and gpus_per_node ≥ 0, got {settings.time_min} and "
                             f"{settings.gpus_per_node}")
        return settings


def job_shape(stage: Stage, settings: SlurmSettings) -> dict[str, int]:
    """Nodes, tasks per node and GPUs per node of the stage's job: its config's `trainer.num_nodes` (default
    1) and `trainer.devices` where it is a number (Lightning must see as many tasks as devices), else the
    launcher's `gpus_per_node`; a CPU stage (`trainer.accelerator: cpu`) asks for no GPU."""
    values = config_values(stage.configs, stage.overrides, REPO_ROOT)
    devices = values.get("trainer.devices")
    nodes = values.get("trainer.num_nodes")
    tasks = devices if isinstance(devices, int) and not isinstance(devices, bool) else max(1, settings.gpus_per_node)
    cpu = values.get("trainer.accelerator") == "cpu"
    return {"nodes": nodes if isinstance(nodes, int) else 1, "tasks_per_node": tasks,
            "gpus_per_node": 0 if cpu else tasks}


class FitJob:
    """The callable a job runs: the stage's fit (`pipelines.run_stage`) in a child process, on every task.

    submitit calls `checkpoint()` when SLURM signals the job (preemption or time-out): the fit gets
    `FORWARDED_SIGNAL`, saves a step checkpoint and exits, and the job is requeued with a fresh FitJob
    that resumes it."""

    def __init__(self, stage: Stage, grace_s: float):
        self.stage = stage
        self.grace_s = grace_s
        self._process: Optional[subprocess.Popen] = None

    def __call__(self) -> dict:
        import submitit

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        rank = submitit.JobEnvironment().global_rank
        return run_stage(self.stage, started=self._started, rank=rank)

    def _started(self, process: subprocess.Popen) -> None:
        self._process = process

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        process = self._process
        if process is not None and process.poll() is None:
            log.warning("[%s] preempted or out of time: the fit saves a step checkpoint, then the job is requeued",
                        self.stage.label)
            process.send_signal(FORWARDED_SIGNAL)
            if not _exits_within(process.pid, self.grace_s):
                log.error("[%s] the fit did not stop within %.0f s; its newest checkpoint is resumed",
                          self.stage.label, self.grace_s)
        return submitit.helpers.DelayedSubmission(FitJob(self.stage, self.grace_s))

    def __getstate__(self) -> dict:
        return {"stage": self.stage, "grace_s": self.grace_s, "_process": None}


def _exits_within(pid: int, seconds: float) -> bool:
    """Whether the child `pid` exits within `seconds`, without reaping it. This runs in a signal handler that
    interrupted `Popen.wait` on the same child: that call holds the Popen's wait lock, so a second `wait`
    could not take it and would never see the exit."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.1)
    return False


def make_executor(settings: SlurmSettings, runs_dir: str):
    """submitit's AutoExecutor for the cluster (`slurm`) or this machine (`local`, `debug`): one interface,
    which takes the SLURM-only parameters (`slurm_*`) and ignores them off SLURM."""
    import submitit

    folder = Path(settings.folder or Path(runs_dir) / ".submitit") / "%j"
    extra = {"slurm_max_num_timeout": settings.max_requeues} if settings.executor == "slurm" else {}
    return submitit.AutoExecutor(folder=folder, cluster=settings.executor, **extra)


def job_parameters(stage: Stage, settings: SlurmSettings) -> dict[str, Any]:
    """The stage's job as submitit's AutoExecutor parameters: the generic ones, and `slurm_*` ones that only
    a SLURM executor reads."""
    shape = job_shape(stage, settings)
    slurm = {"partition": settings.partition, "account": settings.account, "qos": settings.qos,
             "constraint": settings.constraint, "signal_delay_s": settings.signal_delay_s,
             "additional_parameters": dict(settings.additional) or None}
    generic = {"mem_gb": settings.mem_gb, "cpus_per_task": settings.cpus_per_task}
    return {"timeout_min": settings.time_min, "name": f"fit:{stage.label}", **shape,
            **{key: value for key, value in generic.items() if value is not None},
            **{f"slurm_{key}": value for key, value in slurm.items() if value is not None}}


def submit(executor, stage: Stage, settings: SlurmSettings):
    """Submit one run's job with its shape, and record its id and logs in the run directory."""
    parameters = job_parameters(stage, settings)
    executor.update_parameters(**parameters)
    job = executor.submit(FitJob(stage, grace_s=settings.signal_delay_s * 0.9))
    record_submission(Path(stage.run_dir), job, {k: parameters[k] for k in ("nodes", "tasks_per_node", "gpus_per_node")})
    return job


def record_submission(run_dir: Path, job, shape: dict) -> None:
    path = run_dir / "launcher.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    records = json.loads(path.read_text()) if path.exists() else []
    paths = getattr(job, "paths", None)
    records.append({"job_id": str(job.job_id), "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), **shape,
                    "stdout": str(paths.stdout) if paths is not None else None,
                    "stderr": str(paths.stderr) if paths is not None else None})
    path.write_text(json.dumps(records, indent=1))


def run_as_job(executor, stage: Stage, settings: SlurmSettings) -> dict:
    """Submit the run and wait for it (requeues included): its summary, or a RuntimeError with its logs. A
    finished run is reused here, without a job; a run made by another config is refused before one."""
    stage.check_or_record_fingerprint()
    if stage.summary_path.exists():
        log.info("[%s] reusing %s", stage.label, stage.summary_path)
        return stage.summary()
    job = submit(executor, stage, settings)
    log.info("[%s] submitted job %s (%s)", stage.label, job.job_id, Path(stage.run_dir) / "launcher.json")
    try:
        return job.result()
    except Exception as exn:  # submitit raises UncompletedJobError / FailedJobError with the job's traceback
        raise RuntimeError(f"stage {stage.label!r}: job {job.job_id} failed: {str(exn).strip().splitlines()[-1]}; "
                           f"see {getattr(job, 'paths', None) and job.paths.stderr}") from exn
