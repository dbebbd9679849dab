"""Training throughput against open_clip's own trainer, and our data loader alone (CPU, one paired run):

    python benchmarks/throughput.py [--threads 1] [--workers 1] [--repeats 2]

Both trainers get the same embedded shards (20K pairs, built on first use), the same model config
(configs/models/tiny-rn32.json), batch 128, fp32, AdamW, one epoch, the same torch threads and data
workers, no evaluation or checkpointing; runs alternate (ours, open_clip, ours, ...). Throughput is the
mean samples/s over steps 20-150. Our loader is timed alone (model idle) over 100 batches, with
`--loader-workers` workers (default: every core, as a loader would have beside a GPU trainer).
Prints each figure, ours/open_clip (target ≥ 0.95) and loader/trainer (target ≥ 3).
Needs `pip install -e ".[bench]"` (open_clip_train imports pandas).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARDS = "data/embedded/pretrain/{00000..00019}.tar"
MODEL = "configs/models/tiny-rn32.json"
BATCH, WARMUP_STEPS, LAST_STEP = 128, 20, 150


class _LoaderMeasured(Exception):
    pass


def _measure_ours(threads: int, workers: int, loader_only: bool = False) -> dict:
    import torch
    from lightning.pytorch import Callback

    from lightning_app.cli import BackdoorCLI

    class Timer(Callback):
        def __init__(self):
            self.times: list[float] = []
            self.loader = 0.0

        def on_train_start(self, trainer, pl_module):
            loader = trainer.datamodule.train_dataloader()
            batches = iter(loader)
            next(batches)  # worker start-up is not throughput
            start, n = time.perf_counter(), 0
            for _ in range(100):
                n += len(next(batches)["key"])
            self.loader = n / (time.perf_counter() - start)
            del batches
            if loader_only:
                raise _LoaderMeasured

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as run_dir:
        cli = BackdoorCLI(args=[
            "--config", "configs/embedded/clean.yaml", "--trainer.default_root_dir", run_dir,
            "--trainer.max_epochs", "1", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
            "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
            "--trainer.enable_progress_bar", "false", "--torch_threads", str(threads),
            "--data.init_args.num_workers", str(workers), "--data.init_args.batch_size", str(BATCH),
        ], run=False)
        timer = Timer()
        cli.trainer.callbacks.append(timer)
        try:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        except _LoaderMeasured:
            return {"loader_samples_per_s": timer.loader, "workers": workers}
    t = timer.times
    steps = LAST_STEP - WARMUP_STEPS
    return {"train_samples_per_s": steps * BATCH / (t[LAST_STEP - 1] - t[WARMUP_STEPS - 1]),
            "loader_samples_per_s": timer.loader, "torch_threads": torch.get_num_threads()}


def _measure_open_clip(threads: int, workers: int) -> dict:
    from functools import partial

    import open_clip
    import open_clip_train.data
    import torch
    from open_clip_train.main import main as open_clip_main
    from webdataset.tariterators import tar_file_expander

    # webdataset 1.0 ends each shard with an empty `{}` marker that open_clip_train 3.3's own
    # group_by_keys_nothrow cannot handle (KeyError 'fname' after the first shard); turn the marker off.
    open_clip_train.data.tar_file_expander = partial(tar_file_expander, eof_value=None)
    torch.set_num_threads(threads)
    open_clip.add_model_config(str(REPO / MODEL))
    with tempfile.TemporaryDirectory() as logs:
        start = time.perf_counter()
        open_clip_main([
            "--train-data", SHARDS, "--dataset-type", "webdataset", "--train-num-samples", "20000",
            "--batch-size", str(BATCH), "--epochs", "1", "--workers", str(workers), "--model", Path(MODEL).stem,
            "--lr", "2e-3", "--wd", "0.1", "--warmup", "100", "--precision", "fp32", "--device", "cpu",
            "--log-every-n-steps", "10", "--save-frequency", "0", "--logs", logs, "--name", "bench",
            "--report-to", "", "--seed", "0",
        ])
        log_text = (Path(logs) / "bench" / "out.log").read_text()
    # "Train Epoch: 0 [ 2560/20000 (13%)] Data (t): 0.002 Batch (t): 0.125, 1024.0/s, ..." every 10 steps,
    # each the mean over the 10 steps since the previous line
    window = []
    for match in re.finditer(r"\[\s*(\d+)/\d+.*?Batch \(t\): ([\d.]+)", log_text):
        step = int(match.group(1)) // BATCH
        if WARMUP_STEPS < step <= LAST_STEP:
            window.append(float(match.group(2)))
    return {"train_samples_per_s": BATCH / statistics.mean(window), "torch_threads": torch.get_num_threads(),
            "wall_s": time.perf_counter() - start}


def _run(which: str, threads: int, workers: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, __file__, "--measure", which, "--threads", str(threads),
                          "--workers", str(workers)], cwd=REPO, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{which} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _each(runs: list[dict]) -> str:
    return ", ".join(f"{r['train_samples_per_s']:.0f}" for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads of both trainers")
    parser.add_argument("--workers", type=int, default=1, help="data workers of both trainers")
    parser.add_argument("--repeats", type=int, default=2, help="paired runs (ours, open_clip) to average")
    parser.add_argument("--loader-workers", type=int, default=os.cpu_count(), help="data workers of the loader-alone run")
    parser.add_argument("--measure", choices=["ours", "open_clip", "loader"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.chdir(REPO)
    if args.measure:
        if args.measure == "loader":
            print(json.dumps(_measure_ours(args.threads, args.workers, loader_only=True)))
        else:
            measure = _measure_ours if args.measure == "ours" else _measure_open_clip
            print(json.dumps(measure(args.threads, args.workers)))
        return
    from datamodules.embedded.benchmark import EmbeddedBenchmark

    EmbeddedBenchmark(root="data/embedded").prepare()
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(_run("ours", args.threads, args.workers))
        theirs.append(_run("open_clip", args.threads, args.workers))
    train = statistics.mean(r["train_samples_per_s"] for r in ours)
    same_workers_loader = statistics.mean(r["loader_samples_per_s"] for r in ours)
    loader = _run("loader", args.threads, args.loader_workers)["loader_samples_per_s"]
    reference = statistics.mean(r["train_samples_per_s"] for r in theirs)
    print(f"setting: tiny-rn32, batch {BATCH}, fp32, {args.threads} torch thread(s), {args.workers} data worker(s), "
          f"{args.repeats} paired run(s), steps {WARMUP_STEPS}-{LAST_STEP}")
    print(f"ours       train: {train:8.1f} samples/s   (runs: {_each(ours)})")
    print(f"open_clip  train: {reference:8.1f} samples/s   (runs: {_each(theirs)})")
    print(f"ours/open_clip training throughput: {train / reference:.3f}  (target ≥ 0.95)")
    print(f"our loader alone, {args.workers} worker(s): {same_workers_loader:8.1f} samples/s = "
          f"{same_workers_loader / train:.2f}x our trainer's consumption")
    print(f"our loader alone, {args.loader_workers} worker(s): {loader:8.1f} samples/s = "
          f"{loader / train:.2f}x our trainer's consumption  (target ≥ 3)")


if __name__ == "__main__":
    main()
