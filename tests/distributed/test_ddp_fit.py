"""Real 2-process DDP fits on CPU (gloo): launched by the shipped torchrun script; a rank killed mid-epoch; a
SIGTERM to the run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.repo import REPO


def test_torchrun_script_trains_on_two_ranks_with_equal_batches(small_benchmark, tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "NNODES": "1", "GPUS_PER_NODE": "2", "MASTER_PORT": "29613", "OMP_NUM_THREADS": "1"}
    # its own process group, so that a hang is killed whole: torchrun's ranks and their data workers
    launcher = subprocess.Popen(
        [str(REPO / "launch" / "torchrun.sh"), "--config", "configs/embedded/badnet.yaml",
         "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.max_epochs", "1",
         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir),
         "--data.init_args.embedded", "null", "--data.init_args.train_shards", small_benchmark.pretrain_urls,
         "--data.init_args.eval", f"[{{directory: {small_benchmark.eval_dir}}}, "
                                  f"{{directory: {small_benchmark.retrieval_dir}, max_samples: 301}}]",
         "--data.init_args.batch_size", "32",
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
    # the data health of both ranks' streams: every batch trained on, and no more than the 800 pairs
    assert 2 * summary["steps"] * 32 <= summary["data_health"]["good"] <= 800
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == summary["steps"]
    # each set measured over both ranks' halves is what one process measures on the whole set (301
    # retrieval images: the ranks hold 151 and 150)
    one = _evaluate_in_one_process(run_dir, tmp_path / "one")
    assert list(summary["eval"]) == list(one) == ["eval", "retrieval"]
    for name, block in one.items():
        for metric, value in block.items():
            if metric not in ("kind", "eval_seconds"):
                assert summary["eval"][name][metric] == pytest.approx(value, abs=1e-6), (name, metric)


def _evaluate_in_one_process(run_dir: Path, out: Path) -> dict:
    from lightning_app.cli import BackdoorCLI
    from modules.core.evaluation import Evaluation

    cli = BackdoorCLI(args=["validate", "--config", str(run_dir / "config.yaml"), "--trainer.devices", "1",
                            "--trainer.strategy", "auto", "--trainer.default_root_dir", str(out),
                            "--trainer.logger", "false", "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt")])
    return next(c for c in cli.trainer.callbacks if isinstance(c, Evaluation)).last


def _two_rank_fit(bench, run_dir: Path, *extra: str) -> subprocess.Popen:
    """A 3-epoch 2-rank DDP fit through Lightning's own launcher (rank 0 is the process started here, rank 1
    its child), in a process group of its own so that whatever is left of it can be killed whole."""
    return subprocess.Popen(
        [sys.executable, "main.py", "fit", "--config", "configs/embedded/badnet.yaml", "--trainer.accelerator", "cpu",
         "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.max_epochs", "3",
         "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(run_dir), "--torch_threads", "1",
         "--data.init_args.embedded", "null", "--data.init_args.train_shards", bench.pretrain_urls,
         "--data.init_args.eval.directory", bench.eval_dir, "--data.init_args.batch_size", "32",
         "--data.init_args.num_workers", "1", *extra],
        cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, start_new_session=True)


def test_a_rank_killed_mid_epoch_takes_the_run_down_with_a_non_zero_exit(small_benchmark, tmp_path):
    """SIGKILL on rank 1 of a 2-rank DDP fit (Lightning's own launcher: rank 0 is the process we started): the
    run ends with a non-zero exit within DEAD_RANK_EXIT_S, and leaves no process of its group behind
    (no rank or data worker waiting forever on a peer that is gone)."""
    import time

    DEAD_RANK_EXIT_S = 120
    run_dir = tmp_path / "run"
    fit = _two_rank_fit(small_benchmark, run_dir, "--checkpoint_every_n_steps", "2")
    try:
        deadline = time.monotonic() + 300
        while not any(run_dir.glob("checkpoints/step*.ckpt")) and fit.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fit.poll() is None, "the fit ended before it could be interrupted: " + fit.stderr.read()[-2000:]
        ranks = subprocess.run(["pgrep", "-P", str(fit.pid), "-f", "main.py"], capture_output=True, text=True).stdout.split()
        assert ranks, "no rank-1 process under the launcher"
        os.kill(int(ranks[0]), signal.SIGKILL)
        killed_at = time.monotonic()
        code = fit.wait(timeout=DEAD_RANK_EXIT_S)
        print(f"rank 0 exited {code} {time.monotonic() - killed_at:.1f} s after rank 1 was killed")
        assert code != 0
        # its workers see their parent gone; a forkserver still importing its preload (seconds on a loaded
        # machine) notices when the import ends
        deadline = time.monotonic() + 60
        while True:
            group = subprocess.run(["ps", "-o", "pid=,stat=,args=", "-g", str(fit.pid)], capture_output=True, text=True)
            left = [line for line in group.stdout.splitlines() if line.split()[1][0] != "Z"]  # zombies have ended
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not left, f"processes of the run left behind: {left}"
        assert not (run_dir / "summary.json").exists()
    finally:
        if fit.poll() is None:
            os.killpg(fit.pid, signal.SIGKILL)


def test_sigterm_to_rank_0_stops_both_ranks_at_one_step_with_a_checkpoint_and_exit_143(small_benchmark, tmp_path):
    """Lightning's own launcher (rank 0 is the process we started, rank 1 its child): a SIGTERM to rank 0 reaches
    rank 1, both ranks agree on the step to stop at, a step checkpoint of that step is written, and the run exits
    128 + 15 with no summary, leaving no process behind."""
    import time

    run_dir = tmp_path / "run"
    fit = _two_rank_fit(small_benchmark, run_dir)
    try:
        deadline = time.monotonic() + 300
        while not any(run_dir.glob("checkpoints/epoch000-*.ckpt")) and fit.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fit.poll() is None, "the fit ended before it could be signalled: " + fit.stderr.read()[-2000:]
        time.sleep(1.0)  # into epoch 1
        os.kill(fit.pid, signal.SIGTERM)
        _, stderr = fit.communicate(timeout=120)
        assert fit.returncode == 128 + signal.SIGTERM, stderr[-3000:]
        saved = list(run_dir.glob("checkpoints/step*.ckpt"))
        assert len(saved) == 1, sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        step = torch.load(saved[0], map_location="cpu", weights_only=True)["global_step"]
        assert 12 < step < 36, step  # 12 steps an epoch on each of the 2 ranks: stopped inside epoch 1 or 2
        assert not (run_dir / "summary.json").exists()
        time.sleep(2)
        group = subprocess.run(["ps", "-o", "pid=,stat=", "-g", str(fit.pid)], capture_output=True, text=True)
        assert not [line for line in group.stdout.splitlines() if line.split()[1][0] != "Z"], group.stdout
    finally:
        if fit.poll() is None:
            os.killpg(fit.pid, signal.SIGKILL)
