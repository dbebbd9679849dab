"""DataLoader workers that end with the training process that owns them.

A worker started by fork is the rank's child, and torch's own watchdog sees its parent change when the rank
dies. A worker started by the forkserver (`data.init_args.worker_start_method`, the default) is the
server's child: when its rank is killed (SIGKILL, the OOM killer, a preemption) the worker would wait on its
index queue forever, and keep the server alive too. `ExitWithProcess(os.getpid())` as the loader's
`worker_init_fn` watches the rank through a pidfd, which becomes readable when that process ends, and ends
the worker then.
"""

from __future__ import annotations

import os
import select
import threading
import time


class ExitWithProcess:
    """A DataLoader `worker_init_fn` that ends the worker when process `pid` ends (picklable)."""

    def __init__(self, pid: int):
        self.pid = pid

    def __call__(self, worker_id: int) -> None:
        threading.Thread(target=self._watch, name=f"exit-with-{self.pid}", daemon=True).start()

    def _watch(self) -> None:
        try:
            fd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # no pidfd (kernel < 5.3, not Linux): look once a second
            while _running(self.pid):
                time.sleep(1.0)
        else:
            select.select([fd], [], [])
        os._exit(1)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
