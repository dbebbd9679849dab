"""Guards of a run directory's record: one fit at a time, and no resume under another attack.

- `RunLock`: an exclusive `flock` on `RUN/.lock`, held for the life of the fit's process (the kernel
  drops it when the process dies, so a lock left by a dead process is taken over by the next fit). A
  second fit into the same directory fails at once, naming the holder's pid, host and start time.
  Forked data workers close their inherited copy, so the lock dies with the fit's own process.
  flock works across hosts where the shared filesystem forwards it (NFSv4, Lustre with `flock`);
  where it cannot, the holder recorded in the file is still reported when it is another host.
- `refuse_changed_attack`: on resume, the run's saved `config.yaml` (what its weights were trained
  with) against the new config, for every key but those a resume may change (`RESUMABLE_CHANGES`).
- `refuse_foreign_checkpoint`: `--ckpt_path` names one of the run's own checkpoints.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Any

from datamodules.run_dir import RunDir

RESUMABLE_CHANGES = (
    "trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.min_epochs", "trainer.min_steps",
    "trainer.limit_val_batches", "trainer.limit_test_batches", "trainer.limit_predict_batches",
    "trainer.val_check_interval", "trainer.check_val_every_n_epoch", "trainer.num_sanity_val_steps",
    "trainer.log_every_n_steps", "trainer.enable_checkpointing", "trainer.enable_progress_bar",
    "trainer.enable_model_summary", "trainer.logger", "trainer.callbacks", "trainer.profiler",
    "trainer.default_root_dir", "trainer.detect_anomaly", "trainer.barebones", "trainer.inference_mode",
    "trainer.enable_autolog_hparams", "trainer.model_registry", "trainer.accelerator", "trainer.strategy",
    "trainer.plugins", "trainer.benchmark", "trainer.fast_dev_run",
    "data.init_args.eval", "data.init_args.worker_start_method", "data.init_args.max_corrupt_fraction",
    "torch_threads", "checkpoint_every_n_steps", "keep_step_checkpoints", "linear_probe", "ckpt_path", "weights_only",
    "config",
)
"""What a resumed run may change: how long it trains, how it is evaluated, logged, checkpointed and
launched. Every other key (the model class, its objective and recipe, the data, poison and trigger, the
seeds, precision, devices and workers, which fix the batch order) defines what the weights are: a resume
that changed one would train on under another recipe and rewrite the run's `config.yaml` as if the whole
run had been made by it."""

class RunLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._handle = open(self.path, "a+")
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "an unknown process"
            self._handle.close()
            raise ValueError(f"run directory {run_dir} is in use by {holder}: wait for that fit to end, or set "
                             "another trainer.default_root_dir") from None
        # A forked child (a DataLoader worker) shares the locked file description and would keep the
        # lock after this process dies; children close their copy (closing does not unlock the parent's).
        os.register_at_fork(after_in_child=self._handle.close)
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


def _resumable(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE_CHANGES)


def changed_keys(saved: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, saved value, new value) for every defining key whose value differs; a dict on one side
    against anything else on the other is one change at its key."""
    if prefix and _resumable(prefix):
        return []
    if isinstance(saved, dict) and isinstance(new, dict):
        return [change for key in sorted(set(saved) | set(new), key=str)
                for change in changed_keys(saved.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))]
    return [] if saved == new else [(prefix, saved, new)]


def refuse_changed_attack(run: RunDir, new_config: dict) -> None:
    """Raise naming every defining key whose value differs from what the run's weights were trained with."""
    if not run.config_path.exists():
        return
    changed = changed_keys(run.config, new_config)
    if changed:
        details = "; ".join(f"{key}: {old!r} → {new!r}" for key, old, new in changed)
        raise ValueError(f"resuming {run.path} with another model, recipe, attack or data than its checkpoints "
                         f"were trained with ({details}): resume with the run's own config (--config "
                         f"{run.config_path}), or start a new run directory (from these weights: "
                         "--model.init_args.model.pretrained RUN/checkpoints/last.ckpt)")


def refuse_foreign_checkpoint(run: RunDir, ckpt_path: str) -> None:
    """A checkpoint path given to `--ckpt_path` must be one of this run's: resuming another run's
    checkpoint into this directory would report its training (another attack, another recipe) as this run's."""
    if ckpt_path in ("last", "best", "hpc", "registry") or "://" in ckpt_path:
        return
    if not Path(ckpt_path).resolve().is_relative_to(run.checkpoints.resolve()):
        raise ValueError(f"--ckpt_path {ckpt_path} is not a checkpoint of this run ({run.checkpoints}): a resume "
                         "continues its own run. To start a new run from another run's weights, set "
                         f"--model.init_args.model.pretrained {ckpt_path}")
