"""A DataLoader worker ends when the training process that owns it ends, whoever its parent is (datamodules.worker_watch)."""

from __future__ import annotations

import subprocess
import sys
import time

from datamodules.worker_watch import ExitWithProcess, _running

WATCHER = ("import sys, time; from datamodules.worker_watch import ExitWithProcess; ExitWithProcess(int(sys.argv[1]))(0); "
           "print('watching', flush=True); time.sleep(60)")


def test_the_watched_worker_ends_soon_after_its_owner_and_not_before():
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    worker = subprocess.Popen([sys.executable, "-c", WATCHER, str(owner.pid)], stdout=subprocess.PIPE, text=True)
    try:  # (the worker is not the owner's child)
        assert worker.stdout.readline().strip() == "watching"  # (importing the package can take a while)
        time.sleep(1.0)
        assert worker.poll() is None  # its owner runs: it keeps working
        owner.kill()  # the owner is now a zombie until reaped below: that counts as ended
        assert worker.wait(timeout=10) == 1
    finally:
        owner.kill()
        worker.kill()
    owner.wait()
    assert not _running(owner.pid)


def test_a_watcher_is_picklable_for_the_forkserver():
    import pickle

    assert pickle.loads(pickle.dumps(ExitWithProcess(123))).pid == 123
