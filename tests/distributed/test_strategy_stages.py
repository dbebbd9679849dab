"""(slow, distributed) Every stage of the toolkit under DeepSpeed on CPU ranks (gloo, `DS_ACCELERATOR=cpu`,
lightning_app.strategies.CPUDeepSpeedStrategy), from the shipped embedded configs with channels_last as they
ship it, a few steps each at 32 px, through tests/helpers/fit_stages.py:

- ZeRO-3 on 2 ranks: pretraining with each objective, FT, CleanCLIP, ABD's crafting and ABD (patch and
  PGD), DECREE's inversion and repair, RoCLIP, SafeCLIP (through a split epoch), BadCLIP's patch, UBT's
  token unlearning; every defense starts from the 2-rank ZeRO-3 pretraining run's checkpoint directory.
- UBT's discovery and the oracle finder run on one device by design: under ZeRO-3 on 1 rank (their refusal
  on 2 ranks: tests/test_ubt.py).
- one process in bf16-mixed autocast: every stage; the cc3m DeepSpeed command under ZeRO-2; CA and ASR from
  2 ZeRO-3 ranks against one process.
ZeRO-2/3 against DDP, a killed ZeRO-3 run's resume, ZeRO-2 in DeepSpeed's bf16:
tests/distributed/test_zero_against_ddp_and_resume.py.
The CPU strategy partitions every parameter (persistence threshold 0), as ZeRO-3 does with a real-size
model's large weights, so a model pass outside the engine's step that forgot to gather fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers.repo import REPO
from helpers.strategy_runs import (
    HELPER,
    ONE_DEVICE_STAGES,
    OUTPUTS,
    TWO_RANK_STAGES,
    ZERO3,
    assert_trained,
    free_port,
    read_summary,
    run_stages,
    weights,
)


def test_every_stage_trains_under_zero3_on_two_cpu_ranks(small_benchmark, tmp_path):
    out = tmp_path / "zero3"
    run_stages(out, small_benchmark, TWO_RANK_STAGES, ZERO3, 2)
    run_stages(out, small_benchmark, ONE_DEVICE_STAGES, ZERO3, 1)
    run_stages(out, small_benchmark, ["ubt_unlearn"], ZERO3, 2)

    for stage in [*TWO_RANK_STAGES, "ubt_unlearn"]:
        assert_trained(out / stage, stage)
    for stage, path in OUTPUTS.items():
        assert (out / stage / path).exists(), f"{stage} wrote no {path}"

    # a defense starts from the 2-rank ZeRO-3 directory and moves the weights it was given
    pretrained, cleaned = weights(out / "pretrain"), weights(out / "cleanclip")
    assert pretrained.keys() == cleaned.keys()
    assert any(not torch.equal(pretrained[k], cleaned[k]) for k in pretrained if pretrained[k].is_floating_point())
    # and an export of the 2-rank ZeRO-3 run loads in open_clip with the weights the run trained
    import open_clip

    from lightning_app.export import export_run

    export_run(out / "pretrain", tmp_path / "export")
    exported = open_clip.create_model(f"local-dir:{tmp_path / 'export'}")
    torch.testing.assert_close(exported.visual.conv1.weight, pretrained["model.visual.conv1.weight"], rtol=0, atol=0)
    # the patch and the mask were gathered whole before they were written (partitions would be empty)
    from safetensors.torch import load_file

    assert load_file(out / "abd_craft" / "adversarial" / "patch.safetensors")["patch"].shape == (3, 8, 8)
    assert json.loads((out / "ubt_detect" / "ubt" / "suspicious.json").read_text())["keys"]
    assert read_summary(out / "ubt_unlearn")["unlearned_pairs"] == 16



def test_the_gpu_users_cc3m_deepspeed_command_trains_with_the_cpu_strategy(small_benchmark, tmp_path):
    """`main.py fit --config configs/cc3m/pretrain_badnet.yaml --config configs/strategies/deepspeed_zero2.yaml`,
    less the device and the model size: the shipped cc3m model settings (channels_last) under ZeRO-2."""
    run = tmp_path / "cc3m"
    result = subprocess.run(
        [sys.executable, "main.py", "fit", "--config", "configs/cc3m/pretrain_badnet.yaml",
         "--config", "configs/strategies/deepspeed_zero2.yaml", "--config", "configs/strategies/cpu.yaml",
         "--trainer.devices", "1", "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "1",
         "--trainer.limit_train_batches", "2", "--trainer.enable_progress_bar", "false",
         "--model.init_args.model.name", "configs/models/tiny-rn32.json",
         "--data.init_args.train_shards", small_benchmark.pretrain_urls, "--data.init_args.num_samples", "800",
         "--data.init_args.eval", f"[{{directory: {small_benchmark.eval_dir}, num_workers: 1}}]",
         "--data.init_args.num_workers", "1", "--data.init_args.batch_size", "32",
         "--data.init_args.poison.count", "40", "--data.init_args.poison.target", "triangle"],
        cwd=REPO, env={**os.environ, "DS_ACCELERATOR": "cpu"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    config = (run / "config.yaml").read_text()
    assert "channels_last: true" in config and "stage: 2" in config
    summary = read_summary(run)
    assert summary["steps"] == 2 and summary["poison_count"] == 40
    assert 0.0 <= summary["ca_top1"] <= 1.0 and 0.0 <= summary["asr"] <= 1.0


def test_ca_and_asr_from_two_zero3_ranks_equal_one_process_on_the_saved_model(learning_benchmark, small_poisoned_run,
                                                                              tmp_path):
    """The zero-shot pass split over 2 ranks (torchmetrics syncs its counts at compute) reports what one
    process measures on the checkpoint those ranks saved: the BatchNorm statistics included, which
    DeepSpeed, unlike DDP, does not broadcast by itself (CLIPModule._share_buffers)."""
    from modules.core.evaluation import zero_shot_counts
    from modules.core.model_loading import ModelConfig, build_model

    poisoned_dir, poisoned = small_poisoned_run
    run = tmp_path / "ft"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), "main.py",
         "fit", "--config", "configs/embedded/ft.yaml", *[a for f in ZERO3 for a in ("--config", f)],
         "--trainer.devices", "2", "--trainer.default_root_dir", str(run), "--trainer.max_epochs", "1",
         "--trainer.limit_train_batches", "3", "--trainer.enable_progress_bar", "false", "--torch_threads", "1",
         "--model.init_args.model.pretrained", str(poisoned_dir / "checkpoints" / "last.ckpt"),
         "--data.init_args.trigger_dir", str(poisoned_dir / "trigger"), "--data.init_args.embedded", "null",
         "--data.init_args.train_shards", learning_benchmark.pretrain_urls,
         "--data.init_args.eval.directory", learning_benchmark.eval_dir, "--data.init_args.batch_size", "32",
         "--data.init_args.num_workers", "1"],
        cwd=REPO, env={**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = read_summary(run)
    model, spec = build_model(ModelConfig(name="configs/models/tiny-rn32.json",
                                          pretrained=str(run / "checkpoints" / "last.ckpt")))
    counts = zero_shot_counts(model.eval(), spec, learning_benchmark.eval_dir, run / "trigger", "triangle")
    one_process_ca = (counts["correct"].sum() / counts["counts"].sum()).item()
    print("2 ranks", summary["ca_top1"], summary["asr"], "one process", one_process_ca, counts["asr"].compute().item())
    assert summary["ca_top1"] > 0.2  # a trained model (chance: 0.1), so that a wrong statistic shows
    assert summary["ca_top1"] == pytest.approx(one_process_ca, abs=1e-6)
    assert summary["asr"] == pytest.approx(counts["asr"].compute().item(), abs=1e-6)


def test_every_stage_trains_under_bf16_mixed_on_the_cpu(small_benchmark, tmp_path):
    """The autocast path the GPU recipes take (`trainer.precision: bf16-mixed`), one process, every stage."""
    out = tmp_path / "bf16"
    result = subprocess.run([sys.executable, str(HELPER), str(out), small_benchmark.root, "--precision", "bf16-mixed"],
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                            timeout=900)
    failed = out / "failed.txt"
    assert result.returncode == 0, (failed.read_text() if failed.exists() else result.stderr[-4000:])
    for stage in [*TWO_RANK_STAGES, "ubt_unlearn"]:
        assert_trained(out / stage, stage)
        assert "precision: bf16-mixed" in (out / stage / "config.yaml").read_text()
    for stage, path in OUTPUTS.items():
        assert (out / stage / path).exists(), f"{stage} wrote no {path}"
