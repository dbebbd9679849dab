"""A real 2-process DDP fit on CPU (gloo), launched by the shipped torchrun script."""

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_torchrun_script_trains_on_two_ranks_with_equal_batches(small_benchmark, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "NNODES": "1", "GPUS_PER_NODE": "2", "MASTER_PORT": "29613", "OMP_NUM_THREADS": "1"}
    # its own process group, so that a hang is killed whole: torchrun's ranks and their data workers
    launcher = subprocess.Popen(
        [str(REPO / "launch" / "torchrun.sh"), "--config", "configs/embedded/badnet.yaml",
         "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.max_epochs", "1",
         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir),
         "--data.init_args.embedded", "null", "--data.init_args.train_shards", small_benchmark.pretrain_urls,
         "--data.init_args.eval.directory", small_benchmark.eval_dir, "--data.init_args.batch_size", "32",
         "--data.init_args.num_workers", "1", "--model.init_args.optimizer.warmup_steps", "5"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        _, stderr = launcher.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(launcher.pid, signal.SIGKILL)
        _, stderr = launcher.communicate()
        pytest.fail(f"the 2-rank fit did not end in 600 s (killed); its stderr ends:\n{stderr[-3000:]}")
    assert launcher.returncode == 0, stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    # 800 pairs over 2 ranks × 1 worker × batch 32: 12 steps per rank, the same on both (no hang)
    assert summary["steps"] == 800 // (2 * 32)
    assert 0.0 <= summary["ca_top1"] <= 1.0 and 0.0 <= summary["asr"] <= 1.0
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == summary["steps"]
