"""Runs of a study in parallel on one machine: `run FILE --jobs N`.

A run starts once every run it needs has finished, up to N at a time, in the runner's chain order. Each
running fit holds a **slot**: one of N lock files under `runs/.experiments.slots/`, shared by every study
on the machine, so two studies started together share the slots instead of one queueing behind the
other, and never run more than N fits at once (the largest N among them). Slot i owns devices
[i·K, (i+1)·K) of the visible GPUs (`--devices-per-job K`), handed to its fit as
`CUDA_VISIBLE_DEVICES`, so no two fits share a device; on the CPU a fit takes the threads its config
says (`torch_threads`), and N should be at most the cores over that.

Device and slot reach the fit through its environment only, so they are not part of what made the run
(its fingerprint): a run made at `--jobs 4` is the run made at `--jobs 1`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Iterator, Optional

from lightning_app.experiments.schema import StageRun

log = logging.getLogger(__name__)

SLOTS = Path("runs") / ".experiments.slots"
"""Where the machine's slot locks live (relative to the repository root the runner works in)."""


def waves(runs: list[StageRun], jobs: int) -> list[list[str]]:
    """The runs as they would start with `jobs` slots, if every run took the same time: each wave is up to
    `jobs` runs whose dependencies are in earlier waves, in `runs`' order (the chain order)."""
    if jobs < 1:
        raise ValueError(f"--jobs must be ≥ 1, got {jobs}")
    done: set[str] = set()
    pending = list(runs)
    ids = {run.id for run in runs}
    out: list[list[str]] = []
    while pending:
        ready = [run for run in pending if all(d.id in done or d.id not in ids for d in run.deps.values())][:jobs]
        assert ready, "a run waits on one that never runs"  # expand() orders every run after its needs
        out.append([run.id for run in ready])
        done |= {run.id for run in ready}
        pending = [run for run in pending if run.id not in done]
    return out


def devices_of(slot: int, per_job: int, visible: Optional[list[str]]) -> Optional[str]:
    """CUDA_VISIBLE_DEVICES for the fit in `slot` (None on a machine without GPUs)."""
    if not visible:
        return None
    chosen = visible[slot * per_job:(slot + 1) * per_job]
    if len(chosen) < per_job:
        raise ValueError(f"slot {slot} needs GPUs {slot * per_job}..{(slot + 1) * per_job - 1} but {len(visible)} "
                         f"are visible: lower --jobs or --devices-per-job")
    return ",".join(chosen)


def visible_gpus() -> list[str]:
    """The GPUs this process may hand out: CUDA_VISIBLE_DEVICES, else every device torch sees."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [d for d in given.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


@contextlib.contextmanager
def slot(jobs: int, directory: Path = SLOTS, poll_s: float = 0.2) -> Iterator[int]:
    """Hold one of the machine's first `jobs` slots while the block runs (waits until one is free). A request
    made while another is waiting lets it go first: without that, a study whose fit just ended takes its own
    slot back at once and a second study sharing the pool waits until the first has nothing left to run."""
    directory.mkdir(parents=True, exist_ok=True)
    waiting = directory / f"waiting.{os.getpid()}.{threading.get_ident()}"
    first, logged = True, False
    try:
        while True:
            if not (first and _others_waiting(directory, waiting)):
                for index in range(jobs):
                    handle = open(directory / f"slot{index}.lock", "a+")
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        handle.close()
                        continue
                    waiting.unlink(missing_ok=True)
                    try:
                        handle.seek(0)
                        handle.truncate()
                        handle.write(f"pid {os.getpid()}")
                        handle.flush()
                        yield index
                    finally:
                        fcntl.flock(handle, fcntl.LOCK_UN)
                        handle.close()
                    return
                if not logged:
                    log.info("every slot of %s is taken (another study is running); waiting for one", directory)
                    logged = True
            waiting.touch()
            time.sleep(2 * poll_s if first else poll_s)  # long enough for a waiter's next look
            first = False
    finally:
        waiting.unlink(missing_ok=True)


def _others_waiting(directory: Path, mine: Path) -> bool:
    """Whether a request other than `mine` is waiting for a slot (a dead process's mark is removed)."""
    for mark in directory.glob("waiting.*"):
        if mark == mine:
            continue
        try:
            os.kill(int(mark.name.split(".")[1]), 0)
        except (ProcessLookupError, ValueError, IndexError):
            mark.unlink(missing_ok=True)
            continue
        except PermissionError:  # alive, another user's
            pass
        return True
    return False


def run_pool(runs: list[StageRun], jobs: int, start: Callable[[StageRun, dict], None],
             finished: Callable[[StageRun], None], devices_per_job: int = 1,
             slots: Path = SLOTS, assign_devices: bool = True,
             needs_slot: Callable[[StageRun], bool] = lambda run: True) -> dict[str, str]:
    """Run `runs` (in chain order) `jobs` at a time: `start(run, env)` runs one fit, `env` holding the
    environment its slot gives it (its GPUs, with `assign_devices`: not for jobs a cluster places); `finished(run)`
    is called in this thread as each one succeeds. A run that fails (a RuntimeError or ValueError) skips its
    dependants and not its siblings. A run for which `needs_slot(run)` is false (one already finished, which
    `start` only reuses) starts without a slot: it would otherwise wait its turn behind another study's fits,
    one turn for each link of a chain of reused runs. Returns the failed and skipped runs with why."""
    visible = visible_gpus() if assign_devices else []
    ids = {run.id for run in runs}
    failed: dict[str, str] = {}
    succeeded: set[str] = set()
    pending = list(runs)
    running: dict[Future, StageRun] = {}

    def job(run: StageRun) -> None:
        if not needs_slot(run):
            log.info("[%s] finished before: no slot", run.id)
            start(run, dict(os.environ))
            return
        with slot(jobs, slots) as index:
            env = dict(os.environ)
            devices = devices_of(index, devices_per_job, visible)
            if devices is not None:
                env["CUDA_VISIBLE_DEVICES"] = devices
            log.info("[%s] slot %d%s", run.id, index, f", GPUs {devices}" if devices else "")
            start(run, env)

    with ThreadPoolExecutor(max_workers=jobs) as executor:
        while pending or running:
            for run in list(pending):
                broken = [d.id for d in run.deps.values() if d.id in failed]
                if broken:
                    failed[run.id] = f"skipped: {broken[0]} failed"
                    log.error("[%s] %s", run.id, failed[run.id])
                    pending.remove(run)
                elif len(running) < jobs and all(d.id in succeeded or d.id not in ids for d in run.deps.values()):
                    running[executor.submit(job, run)] = run
                    pending.remove(run)
            if not running:
                assert not pending, f"runs wait on runs that never run: {[r.id for r in pending]}"
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                run = running.pop(future)
                try:
                    future.result()
                except (RuntimeError, ValueError) as exn:
                    failed[run.id] = str(exn)
                    log.error("[%s] %s", run.id, exn)
                    continue
                succeeded.add(run.id)
                finished(run)
    return failed
