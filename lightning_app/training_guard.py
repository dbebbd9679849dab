"""Stops a fit that must not go on, leaving what a resume needs and never a result.

- A non-finite training loss stops the run before its backward pass, with an error naming the step:
  the optimizer never steps on it, and `RunCheckpoint` refuses to write non-finite weights, so no
  checkpoint and no `summary.json` of a diverged model exist. (Lightning's `detect_anomaly` checks every
  autograd op and costs a multiple of the step; one `isfinite` on the loss is enough here.)
- A preemption signal (SIGTERM, which SLURM and Kubernetes send before killing a job, and SIGUSR1,
  SLURM's `--signal` warning) saves a step checkpoint at the next batch end and exits with 128 + the
  signal's number, so a scheduler sees a failure and `--ckpt_path last` resumes exactly there. Lightning's
  own handling returns from `fit` (exit 0, no checkpoint at the stop point); under SLURM its auto-requeue
  saves an HPC checkpoint from inside the signal handler, at no batch boundary. Requeueing is left to the
  launcher (the experiment runner resubmits).

Ranks agree: the loss and signal flags are combined over ranks (max) once per step, one small
all-reduce with a host sync, so every rank stops at the same step.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Optional

import torch
from lightning.pytorch import Callback

from lightning_app.checkpointing import DivergedError, save_step_checkpoint
from lightning_app.ranks import over_ranks

log = logging.getLogger(__name__)
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class NonFiniteLossError(DivergedError):
    """The training loss is NaN or inf: the run diverged."""


class Preempted(SystemExit):
    """The fit stopped on a preemption signal; exits with 128 + the signal's number."""

    def __init__(self, signum: int, checkpoint: Any):
        super().__init__(128 + signum)
        self.signum = signum
        self.checkpoint = checkpoint


class TrainingGuard(Callback):
    def __init__(self) -> None:
        self._received: Optional[int] = None
        """The preemption signal this process received (not yet agreed by the ranks)."""
        self._agreed: Optional[int] = None
        """A preemption signal some rank received, as of the last reduction: stop at the next batch end."""
        self._previous_handlers: dict[int, Any] = {}
        self._forward: Optional[Any] = None
        """Sends a signal to the ranks Lightning's launcher started (rank 0 of a `main.py` launch)."""

    def _on_signal(self, signum: int, frame) -> None:
        if self._received is None:
            log.warning("received %s: saving a step checkpoint at the next batch end, then exiting",
                        signal.Signals(signum).name)
            self._received = signum
            if self._forward is not None:
                self._forward(signum)  # Lightning's launcher started the other ranks: they get it too

    def on_train_start(self, trainer, pl_module) -> None:
        # Installed here, after Lightning registered its own handlers (right before the fit loop), in their place.
        launcher = trainer.strategy.launcher
        self._forward = getattr(launcher, "kill", None) if trainer.is_global_zero else None
        if threading.current_thread() is threading.main_thread():
            for signum in PREEMPTION_SIGNALS:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_handlers(self) -> None:
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handlers()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()

    def _reduce(self, trainer, nonfinite_loss: bool) -> tuple[bool, Optional[int]]:
        nonfinite, signum = over_ranks(trainer, [int(nonfinite_loss), self._received or 0], "max")
        return nonfinite > 0, int(signum) or None

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        nonfinite, self._agreed = self._reduce(trainer, not bool(torch.isfinite(loss).all()))
        if nonfinite:
            raise NonFiniteLossError(
                f"the training loss is not finite at step {trainer.global_step} (epoch {trainer.current_epoch}, "
                f"batch {trainer.fit_loop.epoch_loop.batch_progress.current.processed}): the run diverged. No "
                "checkpoint or summary of it is written; lower model.optimizer.lr or raise warmup_steps")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._agreed is not None:
            self._stop(trainer, save_step_checkpoint(trainer))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        # A signal during validation or the epoch's end: the epoch-end checkpoint is already written.
        _, signum = self._reduce(trainer, False)
        if signum is not None:
            self._agreed = signum
            self._stop(trainer, "the newest checkpoint (this epoch's start)")

    def _stop(self, trainer, checkpoint: Any) -> None:
        signum = self._agreed
        assert signum is not None
        log.warning("stopping on %s at step %d; checkpoint: %s; resume with --ckpt_path last",
                    signal.Signals(signum).name, trainer.global_step, checkpoint)
        raise Preempted(signum, checkpoint)
