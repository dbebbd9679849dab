"""Does the real user's path work on this machine's GPUs, and how fast? One command, about 8 minutes on one GPU:

    python benchmarks/gpu_acceptance.py [--steps 60] [--batch-size 64] [--model ViT-B-32]
    python benchmarks/gpu_acceptance.py --cpu-smoke      # the same code path, tiny model, DDP on 2 CPU processes

With CUDA: ViT-B-32 at 224 px, bf16-mixed, on the 224-px embedded tier (built on first use under
data/embedded224), BadNet-poisoned pretraining under (a) DDP on every visible GPU, (b) DeepSpeed ZeRO-2,
(c) ZeRO-3. Each strategy runs two fits: the first half of the steps (with a mid-epoch step checkpoint),
then a resume from its last checkpoint to the full count; every epoch ends with the CA/ASR evaluation
pass. It prints, per strategy, training img/s per GPU (the resumed fit, after its warm-up batches),
peak GPU memory, CA and ASR, and, when `open_clip_train` is installed (`pip install -e ".[bench]"`),
open_clip's own trainer's img/s per GPU on the same shards and model (ratio ours/open_clip).
It exits non-zero if any fit fails, resumes to the wrong step, or reports no CA/ASR.

Without CUDA and without --cpu-smoke it says so and exits 0. `--cpu-smoke` runs all three arms on the tiny
model at 32 px on 2 CPU processes (gloo): DDP, and ZeRO-2 and ZeRO-3 through DeepSpeed's CPU accelerator
(`configs/strategies/cpu.yaml`, `DS_ACCELERATOR=cpu`), in fp32. The model settings are the cc3m configs'
(channels_last on), on the GPU as on the CPU.
Run directories: runs/gpu_acceptance/<strategy>/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "runs" / "gpu_acceptance"
STRATEGIES = {"ddp": "configs/strategies/ddp.yaml", "deepspeed_zero2": "configs/strategies/deepspeed_zero2.yaml",
              "deepspeed_zero3": "configs/strategies/deepspeed_zero3.yaml"}
CPU_STRATEGY = "configs/strategies/cpu.yaml"


def _tier(cpu_smoke: bool):
    sys.path.insert(0, str(REPO))
    from datamodules import EmbeddedBenchmark

    if cpu_smoke:
        bench = EmbeddedBenchmark(root=str(REPO / "data" / "embedded_smoke"), pretrain_shards=4, finetune_shards=1,
                                  samples_per_shard=256, eval_per_class=10, image_size=32)
    else:
        bench = EmbeddedBenchmark(root=str(REPO / "data" / "embedded224"), pretrain_shards=8, finetune_shards=1,
                                  samples_per_shard=1000, eval_per_class=20, image_size=224,
                                  retrieval_images=100, sketch_per_class=5, probe_per_class=5)
    bench.prepare()
    return bench


def _fit(run_dir: Path, strategy: list[str], model: str, precision: str, bench, batch: int, epoch_steps: int, epochs: int,
         patch: int, accelerator: str, devices: str, resume: bool) -> tuple[int, str]:
    args = [sys.executable, str(REPO / "main.py"), "fit", "--config", "configs/embedded/badnet.yaml",
            *[arg for fragment in strategy for arg in ("--config", fragment)], "--trainer.default_root_dir", str(run_dir),
            "--trainer.accelerator", accelerator, "--trainer.devices", devices, "--trainer.precision", precision,
            "--trainer.max_epochs", str(epochs), "--trainer.limit_train_batches", str(epoch_steps),
            "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
            "--checkpoint_every_n_steps", str(max(1, epoch_steps // 2)),
            "--model.init_args.model.name", model, "--model.init_args.model.channels_last", "true",
            "--data.init_args.embedded", "null", "--data.init_args.train_shards", bench.pretrain_urls,
            "--data.init_args.eval.directory", bench.eval_dir, "--data.init_args.batch_size", str(batch),
            "--data.init_args.trigger.init_args.size", str(patch), "--data.init_args.num_workers", "2"]
    if resume:
        args += ["--ckpt_path", "last"]
    log = run_dir.parent / f"{run_dir.name}.{'resume' if resume else 'first'}.log"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DS_ACCELERATOR": "cpu"} if CPU_STRATEGY in strategy else None
    with open(log, "w") as out:
        rc = subprocess.run(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=env).returncode
    return rc, str(log)


def _open_clip_rate(model: str, bench, batch: int, steps: int, gpus: int) -> float | None:
    """open_clip_train's img/s per GPU on the same shards (None when it is not installed or fails)."""
    try:
        import open_clip_train  # noqa: F401
    except ImportError:
        return None
    logs = RUNS / "open_clip"
    shutil.rmtree(logs, ignore_errors=True)
    command = ["torchrun", f"--nproc_per_node={gpus}", "-m", "open_clip_train.main", "--model", model,
               "--train-data", bench.pretrain_urls, "--dataset-type", "webdataset",
               "--train-num-samples", str(steps * batch * gpus), "--batch-size", str(batch), "--epochs", "1",
               "--precision", "amp_bf16", "--workers", "2", "--logs", str(logs), "--log-every-n-steps", "5",
               "--report-to", "", "--save-frequency", "0"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    rates = [float(m) for m in re.findall(r"([\d.]+)/s/gpu", result.stdout + result.stderr)]
    return sum(rates[len(rates) // 2:]) / len(rates[len(rates) // 2:]) if rates else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per strategy, two epochs of half (default 60; 16 with --cpu-smoke)")
    parser.add_argument("--batch-size", type=int, default=64, help="per device")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny model, every arm on 2 CPU processes")
    parser.add_argument("--strategies", nargs="+", choices=list(STRATEGIES), default=list(STRATEGIES),
                        help="the arms to run (default: all)")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_smoke:
        print("no CUDA here: nothing to accept (run with --cpu-smoke to exercise the same code path on the CPU)")
        return 0
    if args.steps is None:
        args.steps = 16 if args.cpu_smoke else 60
    if args.steps < 4:
        parser.error("--steps must be ≥ 4 (two epochs, each with a mid-epoch checkpoint)")
    bench = _tier(args.cpu_smoke)
    if args.cpu_smoke:
        model, precision, accelerator, devices, patch = "configs/models/tiny-rn32.json", "32-true", "cpu", "2", 8
        strategies = {name: [path] + ([CPU_STRATEGY] if name != "ddp" else []) for name, path in STRATEGIES.items()}
        batch = min(args.batch_size, 32)
    else:
        model, precision, accelerator, devices, patch = args.model, "bf16-mixed", "gpu", "-1", 16
        strategies = {name: [path] for name, path in STRATEGIES.items()}
        batch = args.batch_size
    gpus = torch.cuda.device_count() if cuda and not args.cpu_smoke else 2
    epoch_steps = args.steps // 2
    failures, rows = [], []
    for name, strategy in ((name, strategies[name]) for name in args.strategies):
        run_dir = RUNS / name
        shutil.rmtree(run_dir, ignore_errors=True)
        start = time.perf_counter()
        rc, log = _fit(run_dir, strategy, model, precision, bench, batch, epoch_steps, 1, patch, accelerator, devices, False)
        if rc == 0:
            rc, log = _fit(run_dir, strategy, model, precision, bench, batch, epoch_steps, 2, patch, accelerator, devices,
                           True)
        summary_path = run_dir / "summary.json"
        if rc != 0 or not summary_path.exists():
            failures.append(f"{name}: fit failed (exit {rc}), see {log}")
            continue
        summary = json.loads(summary_path.read_text())
        if summary["steps"] != 2 * epoch_steps:
            failures.append(f"{name}: resumed to step {summary['steps']}, expected {2 * epoch_steps}")
        if summary.get("ca_top1") is None or summary.get("asr") is None:
            failures.append(f"{name}: no CA/ASR in {summary_path}")
        rate = summary.get("train_samples_per_s")
        rows.append((name, summary["steps"], rate / gpus if rate else None, summary.get("peak_gpu_memory_gb"),
                     summary.get("ca_top1"), summary.get("asr"), time.perf_counter() - start))
    reference = None if args.cpu_smoke else _open_clip_rate(model, bench, batch, args.steps, gpus)

    def fmt(value, digits=1):
        return "–" if value is None else f"{value:.{digits}f}"

    print(f"\nmodel {model}, {precision}, {'CPU smoke test' if args.cpu_smoke else f'{gpus} GPU(s)'}, batch {batch} per "
          f"device, {args.steps} steps (resumed at {epoch_steps}), tier {bench.root} ({bench.image_size} px)")
    print("| strategy | steps | img/s per device | peak GPU memory (GiB) | CA | ASR | wall time (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, steps, rate, memory, ca, asr, seconds in rows:
        print(f"| {name} | {steps} | {fmt(rate)} | {fmt(memory, 2)} | {fmt(ca, 3)} | {fmt(asr, 3)} | {seconds:.0f} |")
    if not args.cpu_smoke:
        ours = next((rate for name, _, rate, *_ in rows if name == "ddp"), None)
        if reference is None:
            print("open_clip_train: not installed or failed (pip install -e \".[bench]\"); no ratio")
        else:
            print(f"open_clip_train: {reference:.1f} img/s per GPU; ours (DDP) / open_clip = {fmt(ours and ours / reference, 2)}")
    for failure in failures:
        print(f"FAILED {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
