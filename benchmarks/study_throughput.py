"""How much faster a study runs with its runs in parallel: a small study (two attacks on the small embedded
benchmark, an FT run made from each) run by the experiment runner at `--jobs 1` and at `--jobs 2`, each in
a fresh runs directory. Prints both wall times and their ratio (the goal on 2 CPU cores: at least 1.6×).

    python benchmarks/study_throughput.py [--epochs 2] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from datamodules.embedded.benchmark import EmbeddedBenchmark  # noqa: E402


def study(bench: EmbeddedBenchmark, runs: Path, epochs: int) -> dict:
    small = {"data.init_args.embedded": None, "data.init_args.eval.directory": bench.eval_dir,
             "data.init_args.batch_size": 32, "trainer.max_epochs": epochs, "torch_threads": 1}
    return {
        "name": "throughput", "runs": str(runs), "seeds": [0],
        "stages": {
            "attack": {"config": "configs/embedded/badnet.yaml", "seed_keys": ["seed_everything"],
                       "set": {**small, "data.init_args.train_shards": bench.pretrain_urls,
                               "data.init_args.poison.rate": 0.1}},
            "ft": {"config": "configs/embedded/ft.yaml", "from": "attack",
                   "set": {**small, "data.init_args.train_shards": bench.finetune_urls}},
        },
        "axes": {"attack": {"stages": ["attack"], "values": {
            "badnet": {}, "sig": {"data.init_args.trigger": "configs/embedded/triggers/sig.yaml"}}}},
        "tables": [{"block": "throughput", "rows": ["attack", "stage"], "columns": ["ca_top1", "asr"], "plot": False}],
    }


def timed_run(bench: EmbeddedBenchmark, root: Path, jobs: int, epochs: int) -> float:
    path = root / f"jobs{jobs}.yaml"
    path.write_text(yaml.safe_dump(study(bench, root / f"runs_jobs{jobs}", epochs)))
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "lightning_app.experiments", "run", str(path), "--jobs", str(jobs)],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs of every fit")
    parser.add_argument("--jobs", type=int, default=2, help="the parallel arm's --jobs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        bench = EmbeddedBenchmark(root=str(root / "bench"), pretrain_shards=4, finetune_shards=2,
                                  samples_per_shard=500, eval_per_class=20)
        bench.prepare()
        serial = timed_run(bench, root, 1, args.epochs)
        parallel = timed_run(bench, root, args.jobs, args.epochs)
    print(f"4 fits (2 attacks, an FT from each), {args.epochs} epochs each, on {os.cpu_count()} cores")
    print(f"--jobs 1: {serial:.1f} s")
    print(f"--jobs {args.jobs}: {parallel:.1f} s")
    print(f"ratio: {serial / parallel:.2f}x")


if __name__ == "__main__":
    main()
