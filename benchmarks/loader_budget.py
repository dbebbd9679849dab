"""How many loader workers does one GPU need at 224 px? Our loader alone (model idle), per worker:

    python benchmarks/loader_budget.py [--workers 1 2] [--batches 30] [--gpu-rate IMG_PER_S]

On the 224-px embedded tier (JPEG pairs, built on first use under data/embedded224, shared with
benchmarks/gpu_acceptance.py), with the training path a real run has: JPEG decode, resize and crop to
224, BadNet poisoning of 5% of the pairs (16-px patch), normalisation, tokenisation, batches of 64.
Prints samples/s for each worker count and per worker, then the workers one GPU needs to feed a
training rate: `--gpu-rate`, else the img/s per GPU that a GPU run of benchmarks/gpu_acceptance.py
measured (runs/gpu_acceptance/ddp/summary.json), else an assumed 2,000 img/s per GPU (the order of
ViT-B-32 in bf16 on one A100; an assumption, printed as such, until a GPU run replaces it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ASSUMED_GPU_RATE = 2000.0


class _Measured(Exception):
    pass


def measure(bench, workers: int, batches: int) -> float:
    """Samples/s of the training loader with `workers` worker processes, over `batches` batches after the first."""
    from lightning.pytorch import Callback

    from lightning_app.cli import BackdoorCLI

    class Timer(Callback):
        rate = 0.0

        def on_train_start(self, trainer, pl_module):
            batches_iter = iter(trainer.datamodule.train_dataloader())
            next(batches_iter)  # worker start-up is not throughput
            start, n = time.perf_counter(), 0
            for _ in range(batches):
                n += len(next(batches_iter)["key"])
            Timer.rate = n / (time.perf_counter() - start)
            raise _Measured

    with tempfile.TemporaryDirectory() as run_dir:
        cli = BackdoorCLI(args=[
            "--config", "configs/embedded/badnet.yaml", "--trainer.default_root_dir", run_dir,
            "--model.init_args.model.name", "ViT-B-32", "--model.init_args.model.channels_last", "false",
            "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0", "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
            "--data.init_args.embedded", "null", "--data.init_args.train_shards", bench.pretrain_urls,
            "--data.init_args.eval.directory", bench.eval_dir, "--data.init_args.batch_size", "64",
            "--data.init_args.trigger.init_args.size", "16", "--data.init_args.num_workers", str(workers),
        ], run=False)
        cli.trainer.callbacks.append(Timer())
        try:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        except _Measured:
            return Timer.rate
    raise AssertionError("the timer stops the fit at its start")


def gpu_rate(given: float | None) -> tuple[float, str]:
    if given:
        return given, "given (--gpu-rate)"
    summary = REPO / "runs" / "gpu_acceptance" / "ddp" / "summary.json"
    if summary.exists():
        data = json.loads(summary.read_text())
        if data.get("peak_gpu_memory_gb") is not None and data.get("train_samples_per_s"):
            import torch

            per_gpu = data["train_samples_per_s"] / max(1, torch.cuda.device_count())
            return per_gpu, f"measured by benchmarks/gpu_acceptance.py ({summary})"
    return ASSUMED_GPU_RATE, "ASSUMED (ViT-B-32 bf16 on one A100, order of magnitude); measure with gpu_acceptance.py"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--gpu-rate", type=float, default=None, help="img/s one GPU trains at")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from datamodules import EmbeddedBenchmark

    bench = EmbeddedBenchmark(root=str(REPO / "data" / "embedded224"), pretrain_shards=8, finetune_shards=1,
                              samples_per_shard=1000, eval_per_class=20, image_size=224,
                                  retrieval_images=100, sketch_per_class=5, probe_per_class=5)
    bench.prepare()
    rates = {workers: measure(bench, workers, args.batches) for workers in args.workers}
    print(f"loader at 224 px (JPEG decode, 5% BadNet poisoning, transform, tokenise), batch 64, {args.batches} batches:")
    for workers, rate in rates.items():
        print(f"  {workers} worker(s): {rate:.0f} samples/s ({rate / workers:.0f} per worker)")
    per_worker = max(rate / workers for workers, rate in rates.items())
    target, source = gpu_rate(args.gpu_rate)
    print(f"one GPU at {target:.0f} img/s ({source}) needs {math.ceil(target / per_worker)} workers "
          f"at {per_worker:.0f} samples/s per worker (this machine's cores; a GPU host's may differ)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
