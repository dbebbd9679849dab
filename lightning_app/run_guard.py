"""Guards of a run directory's record: one fit at a time, and no resume under another attack.

- `RunLock`: an exclusive `flock` on `RUN/.lock`, held for the life of the fit's process (the kernel
  drops it when the process dies, so a lock left by a dead process is taken over by the next fit). A
  second fit into the same directory fails at once, naming the holder's pid, host and start time.
  Forked data workers close their inherited copy, so the lock dies with the fit's own process.
  flock works across hosts where the shared filesystem forwards it (NFSv4, Lustre with `flock`);
  where it cannot, the holder recorded in the file is still reported when it is another host.
- `refuse_changed_attack`: on resume, the run's saved `config.yaml` (what its weights were trained
  with) against the new config, for every key that defines the attack or the data.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Any

from datamodules.run_dir import RunDir

# What a resumed run may not change: the data it streams, which pairs are poisoned and how, the
# trigger, the architecture and the seed that orders the data.
DEFINING_KEYS = (
    "seed_everything",
    "model.init_args.model.name",
    "data.init_args.train_shards",
    "data.init_args.embedded",
    "data.init_args.poison",
    "data.init_args.trigger",
    "data.init_args.trigger_dir",
    "data.init_args.seed",
)


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


def _value(config: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(config, dict):
            return None
        config = config.get(part)
    return config


def refuse_changed_attack(run: RunDir, new_config: dict) -> None:
    """Raise naming every defining key whose value differs from what the run's weights were trained with."""
    if not run.config_path.exists():
        return
    changed = [key for key in DEFINING_KEYS if _value(run.config, key) != _value(new_config, key)]
    if changed:
        details = "; ".join(f"{key}: {_value(run.config, key)!r} → {_value(new_config, key)!r}" for key in changed)
        raise ValueError(f"resuming {run.path} with another attack or data than its checkpoints were trained "
                         f"with ({details}): resume with the run's own config (--config {run.config_path}) "
                         "or start a new run directory")
