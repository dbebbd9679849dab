"""Do 2-rank fits hang with their DataLoader workers? Runs the same short 2-rank DDP job N times beside a CPU load,
once per worker start method, and counts the runs that did not end within the timeout:

    python benchmarks/worker_hang_stress.py [--runs 30] [--methods fork forkserver] [--strategy zero2]
        [--load 2] [--timeout 120]

Each run is one process group (torchrun, 2 ranks, gloo) that fits two stages one after the other in the same
processes (tests/helpers/fit_stages.py: BadNet pretraining, then CleanCLIP from it) under DDP or DeepSpeed on
the CPU, one data worker per rank and per eval loader, on the 32-px smoke tier (built on first use under
data/embedded_smoke). The second stage's
workers are started by processes that already run gloo's, TensorBoard's and tqdm's threads: with `fork`, a
child that inherits a lock held by one of them at the instant of the fork waits on it forever. A run that
times out has the Python stacks of its processes dumped with py-spy (`pip install py-spy`; skipped
without it) into runs/worker_hang_stress/, and is killed whole. Prints a row per method: runs, hangs,
failures, median wall time of the runs that ended.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "runs" / "worker_hang_stress"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bench() -> Path:
    sys.path.insert(0, str(REPO))
    from datamodules import EmbeddedBenchmark

    bench = EmbeddedBenchmark(root=str(REPO / "data" / "embedded_smoke"), pretrain_shards=4, finetune_shards=1,
                              samples_per_shard=256, eval_per_class=10, image_size=32)
    bench.prepare()
    return Path(bench.root)


def _descendants(root: int) -> list[int]:
    """`root` and every process below it (torchrun starts each rank in a session of its own, so a process
    group does not hold them)."""
    table = subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.split()
    children: dict[int, list[int]] = {}
    for pid, ppid in zip(map(int, table[::2]), map(int, table[1::2])):
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += children.get(pid, [])
    return found


def _dump_stacks(pids: list[int], log: Path) -> None:
    if shutil.which("py-spy") is None:
        log.write_text("py-spy is not installed: no stacks\n")
        return
    with open(log, "w") as out:
        for pid in pids:
            out.write(f"===== {pid}\n")
            out.flush()
            subprocess.run(["py-spy", "dump", "--pid", str(pid)], stdout=out, stderr=subprocess.STDOUT, timeout=60)


STRATEGIES = {"ddp": ["configs/strategies/ddp.yaml"],
              "zero2": ["configs/strategies/deepspeed_zero2.yaml", "configs/strategies/cpu.yaml"],
              "zero3": ["configs/strategies/deepspeed_zero3.yaml", "configs/strategies/cpu.yaml"]}


def run_once(bench: Path, method: str, strategy: str, index: int, timeout: float) -> tuple[str, float]:
    """("ok" | "hang" | "failed", wall seconds) of one 2-rank, two-stage job."""
    run = OUT / f"{strategy}-{method}-{index:02d}"
    shutil.rmtree(run, ignore_errors=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(_free_port()), str(REPO / "tests" / "helpers" / "fit_stages.py"), str(run), str(bench),
               "--devices", "2", "--steps", "4", "--strategy", *STRATEGIES[strategy], "--stages", "pretrain", "cleanclip",
               f"--override=--data.init_args.worker_start_method {method}"]
    start = time.perf_counter()
    with open(f"{run}.log", "w") as log:
        job = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"})
        try:
            code = job.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pids = _descendants(job.pid)
            _dump_stacks(pids, Path(f"{run}.stacks.txt"))
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            job.wait()
            return "hang", time.perf_counter() - start
    return ("ok" if code == 0 else "failed"), time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="runs per start method")
    parser.add_argument("--methods", nargs="+", default=["fork", "forkserver"], choices=["fork", "forkserver", "spawn"])
    parser.add_argument("--strategy", choices=sorted(STRATEGIES), default="zero2")
    parser.add_argument("--load", type=int, default=2, help="CPU-burning processes beside the runs")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds after which a run counts as hung")
    args = parser.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    bench = _bench()
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.load)]
    rows = []
    try:
        for method in args.methods:
            outcomes = [run_once(bench, method, args.strategy, i, args.timeout) for i in range(args.runs)]
            ended = [seconds for outcome, seconds in outcomes if outcome != "hang"]
            rows.append((method, len(outcomes), sum(o == "hang" for o, _ in outcomes),
                         sum(o == "failed" for o, _ in outcomes), statistics.median(ended) if ended else None))
            print(f"{method}: {rows[-1][2]} hangs, {rows[-1][3]} failures in {rows[-1][1]} runs", flush=True)
    finally:
        for burner in burners:
            burner.kill()
    print(f"\n2 ranks ({args.strategy}, gloo), two stages per process, 1 worker per loader, {args.load} CPU burners, "
          f"timeout {args.timeout:.0f} s; logs and stacks in {OUT}")
    print("| worker start | runs | hangs | failed | median wall time (s) |")
    print("|---|---:|---:|---:|---:|")
    for method, runs, hangs, failed, median in rows:
        print(f"| {method} | {runs} | {hangs} | {failed} | {'–' if median is None else f'{median:.0f}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
