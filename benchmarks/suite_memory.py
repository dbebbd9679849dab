"""Peak resident memory of README's test command: one pytest process, as a newcomer runs it.

    python benchmarks/suite_memory.py                     # the whole suite (`python -m pytest -q`)
    python benchmarks/suite_memory.py -m "not slow"       # any pytest arguments, e.g. the fast tier
    python benchmarks/suite_memory.py --top 15 tests/integration/test_resume.py

Prints the pytest process's peak (VmHWM: what a 16 GB laptop must hold), the largest process it started
(fits run as `main.py` subprocesses, reaped, so their peaks show in the children's `ru_maxrss`), and the
tests after which the pytest process's resident memory grew most. Goal: the pytest process under 6 GB.
Linux only (/proc). Exits with pytest's exit code.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GOAL_GB = 6.0
PLUGIN = '''
import os, pytest
def _rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0
_last = [0]
@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    rss = _rss_kb()
    with open(os.environ["SUITE_MEMORY_LOG"], "a") as log:
        log.write(f"{rss - _last[0]}\\t{rss}\\t{item.nodeid}\\n")
    _last[0] = rss
'''


def _vm_hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=10, help="How many tests of largest memory growth to list.")
    args, pytest_args = parser.parse_known_args()
    with tempfile.TemporaryDirectory() as scratch:
        (Path(scratch) / "suite_memory_plugin.py").write_text(PLUGIN)
        log = Path(scratch) / "growth.tsv"
        env = {**os.environ, "SUITE_MEMORY_LOG": str(log),
               "PYTHONPATH": os.pathsep.join(filter(None, [scratch, os.environ.get("PYTHONPATH")]))}
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "suite_memory_plugin", *pytest_args],
                                   cwd=REPO, env=env)
        peak_kb = 0
        while process.poll() is None:  # VmHWM is gone once the process has exited: read it while it runs
            peak_kb = max(peak_kb, _vm_hwm_kb(process.pid) or 0)
            time.sleep(0.5)
        wall = time.perf_counter() - start
        largest_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rows = [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []
    print(f"\npytest process peak (VmHWM): {peak_kb / 2**20:.2f} GB  (goal < {GOAL_GB:.0f} GB)")
    print(f"largest process of the run (pytest or a fit it started): {largest_kb / 2**20:.2f} GB")
    print(f"wall time {wall / 60:.1f} min, {len(rows)} tests, exit code {process.returncode}")
    if rows:
        print("tests after which the pytest process grew most (MB growth, MB resident after):")
        for growth, rss, nodeid in sorted(rows, key=lambda row: -int(row[0]))[: args.top]:
            print(f"  {int(growth) / 1024:8.0f} {int(rss) / 1024:8.0f}  {nodeid}")
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
