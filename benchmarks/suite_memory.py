"""Peak resident memory and wall time of README's test command, as a newcomer runs it (two pytest-xdist
workers, one test file each at a time).

    python benchmarks/suite_memory.py                     # the whole suite (`python -m pytest -q -n 2 --dist loadfile`)
    python benchmarks/suite_memory.py -m "not slow"       # any pytest arguments, e.g. the fast tier
    python benchmarks/suite_memory.py -p no:xdist --top 15 tests/integration/test_resume.py   # in one process

Prints the peak of the whole run's memory (pytest, its workers and the fits they start: their proportional
set sizes summed, so that pages they share count once; sampled every half second: what a 16 GB laptop must
hold), the largest single process, and the tests after
which a pytest process (a worker) grew most. Goal: the whole run under 12 GB. Linux only (/proc). Exits with
pytest's exit code.
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
GOAL_GB = 12.0
README_OPTIONS = ["-n", "2", "--dist", "loadfile"]
"""README's test command's options (besides -q); left out when the arguments choose the workers themselves."""
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


def _pss_kb(pid: int) -> int:
    """A process's proportional set size: its resident pages, each shared one divided among its sharers (forked
    workers and ranks share most of torch's pages, which a sum of VmRSS counts once per process)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def _tree_pss_kb(root: int) -> int:
    """The memory a process and every process under it hold together (their PSS, summed)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(stat.parent.name))
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += _pss_kb(pid)
        stack += children.get(pid, [])
    return total


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
        chooses_workers = any(a in ("-n", "--numprocesses", "no:xdist") or a.startswith("-n") for a in pytest_args)
        options = [] if chooses_workers else README_OPTIONS
        process = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "suite_memory_plugin", *options,
                                    *pytest_args], cwd=REPO, env=env)
        peak_kb = 0
        while process.poll() is None:
            peak_kb = max(peak_kb, _tree_pss_kb(process.pid))
            time.sleep(0.5)
        wall = time.perf_counter() - start
        largest_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        rows = [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []
    print(f"\nwhole run's peak memory (every process's PSS, summed): {peak_kb / 2**20:.2f} GB  "
          f"(goal < {GOAL_GB:.0f} GB)")
    print(f"largest single process (a pytest worker or a fit it started): {largest_kb / 2**20:.2f} GB")
    print(f"wall time {wall / 60:.1f} min, {len(rows)} tests, exit code {process.returncode}")
    if rows:
        print("tests after which their pytest process grew most (MB growth, MB resident after):")
        for growth, rss, nodeid in sorted(rows, key=lambda row: -int(row[0]))[: args.top]:
            print(f"  {int(growth) / 1024:8.0f} {int(rss) / 1024:8.0f}  {nodeid}")
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
