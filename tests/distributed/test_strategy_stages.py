"""(slow, distributed) Every stage of the toolkit under DeepSpeed on CPU ranks (gloo, `DS_ACCELERATOR=cpu`,
lightning_app.strategies.CPUDeepSpeedStrategy), from the shipped embedded configs with channels_last as they
ship it, a few steps each at 32 px, through tests/helpers/fit_stages.py:

- ZeRO-3 on 2 ranks: pretraining with each objective, FT, CleanCLIP, ABD's crafting and ABD (patch and
  PGD), DECREE's inversion and repair, RoCLIP, SafeCLIP (through a split epoch), BadCLIP's patch, UBT's
  token unlearning; every defense starts from the 2-rank ZeRO-3 pretraining run's checkpoint directory.
- UBT's discovery and the oracle finder run on one device by design: under ZeRO-3 on 1 rank (their refusal
  on 2 ranks: tests/test_ubt.py).
- ZeRO-2 on 2 ranks: pretraining, CleanCLIP, ABD (in DeepSpeed's bf16; fp32 ZeRO-2 against DDP).
The CPU strategy partitions every parameter (persistence threshold 0), as ZeRO-3 does with a real-size
model's large weights, so a model pass outside the engine's step that forgot to gather fails here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.repo import REPO

HELPER = REPO / "tests" / "helpers" / "fit_stages.py"
ZERO3 = ["configs/strategies/deepspeed_zero3.yaml", "configs/strategies/cpu.yaml"]
ZERO2 = ["configs/strategies/deepspeed_zero2.yaml", "configs/strategies/cpu.yaml"]
TWO_RANK_STAGES = ["pretrain", "pretrain_ssl", "pretrain_siglip", "pretrain_cyclip", "ft", "cleanclip", "abd_craft",
                   "abd", "abd_pgd", "decree", "repair", "roclip", "safeclip", "badclip_patch"]
ONE_DEVICE_STAGES = ["ubt_detect", "oracle_finder"]
NOT_EVALUATED = {"abd_craft", "decree", "badclip_patch"}  # their configs skip the zero-shot pass (limit_val_batches: 0)
# artefacts a stage writes outside its checkpoints (each read back below)
OUTPUTS = {"abd_craft": "adversarial/patch.safetensors", "decree": "inversion/trigger/trigger.json",
           "badclip_patch": "badclip/patch.png", "safeclip": "safeclip/epoch_001.json",
           "ubt_detect": "ubt/suspicious.json", "oracle_finder": "oracle/finding.json"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stages(out: Path, bench, stages: list[str], strategy: list[str], ranks: int, steps: int = 2,
            precision: str = "32-true") -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
                 str(_free_port())] if ranks > 1 else [sys.executable])
    result = subprocess.run([*launcher, str(HELPER), str(out), bench.root, "--devices", str(ranks),
                             "--steps", str(steps), "--precision", precision, "--strategy", *strategy,
                             "--stages", *stages],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    failed = out / "failed.txt"
    assert result.returncode == 0, (failed.read_text() if failed.exists() else result.stderr[-4000:])


def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def _weights(run: Path) -> dict[str, torch.Tensor]:
    from modules.core.deepspeed_checkpoint import read_deepspeed_state_dict

    return read_deepspeed_state_dict(run / "checkpoints" / "last.ckpt")


def _trained(run: Path, stage: str) -> None:
    """The stage took optimizer steps, its logged objectives are finite, and it measured CA and ASR."""
    summary = _summary(run)
    assert summary["steps"] >= 1, stage
    if stage not in NOT_EVALUATED:
        assert 0.0 <= summary["ca_top1"] <= 1.0 and 0.0 <= summary["asr"] <= 1.0, (stage, summary["ca_top1"], summary["asr"])
    losses = [float(value) for row in _metrics(run) for name, value in row.items()
              if value and name.endswith(("loss", "objective"))]
    assert losses and all(math.isfinite(x) for x in losses), (stage, losses)


def _metrics(run: Path) -> list[dict]:
    import csv

    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def test_every_stage_trains_under_zero3_on_two_cpu_ranks(small_benchmark, tmp_path):
    out = tmp_path / "zero3"
    _stages(out, small_benchmark, TWO_RANK_STAGES, ZERO3, 2)
    _stages(out, small_benchmark, ONE_DEVICE_STAGES, ZERO3, 1)
    _stages(out, small_benchmark, ["ubt_unlearn"], ZERO3, 2)

    for stage in [*TWO_RANK_STAGES, "ubt_unlearn"]:
        _trained(out / stage, stage)
    for stage, path in OUTPUTS.items():
        assert (out / stage / path).exists(), f"{stage} wrote no {path}"

    # a defense starts from the 2-rank ZeRO-3 directory and moves the weights it was given
    pretrained, cleaned = _weights(out / "pretrain"), _weights(out / "cleanclip")
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
    assert _summary(out / "ubt_unlearn")["unlearned_pairs"] == 16



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
    summary = _summary(run)
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
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()), "main.py",
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
    summary = _summary(run)
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
        _trained(out / stage, stage)
        assert "precision: bf16-mixed" in (out / stage / "config.yaml").read_text()
    for stage, path in OUTPUTS.items():
        assert (out / stage / path).exists(), f"{stage} wrote no {path}"


def _state(run: Path) -> dict[str, torch.Tensor]:
    from modules.core.deepspeed_checkpoint import is_deepspeed_checkpoint

    path = run / "checkpoints" / "last.ckpt"
    if is_deepspeed_checkpoint(path):
        return _weights(run)
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _losses(run: Path) -> list[float]:
    return [float(row["train/loss"]) for row in _metrics(run) if row.get("train/loss")]


# fp32, the same 2 ranks, seed and batches. ZeRO-2 gives DDP's weights to the bit (measured: 0.0). ZeRO-3
# reduce-scatters the gradients where DDP all-reduces them, so a gradient can differ in its last bits; AdamW
# normalises every update to about lr, so a weight whose gradient is near zero can then step another way:
# measured worst differences 2.6e-5 after 3 pretraining steps and 1.4e-4 after 3 more of CleanCLIP at lr 1e-3.
# The bound is half of one such step; the losses agree to 1e-6 (bounded at 1e-5).
ZERO3_WEIGHT_ATOL = 5e-4
LOSS_ATOL = 1e-5


def test_zero2_and_zero3_train_the_same_weights_as_ddp(small_benchmark, tmp_path):
    """Pretraining then CleanCLIP, 3 steps each on 2 CPU ranks, under DDP, ZeRO-2 and ZeRO-3: the loss at every
    step agrees within LOSS_ATOL; every weight after the last step is DDP's to the bit under ZeRO-2 and
    within ZERO3_WEIGHT_ATOL under ZeRO-3."""
    stages = ["pretrain", "cleanclip"]
    runs = {}
    for name, strategy in {"ddp": ["configs/strategies/ddp.yaml"], "zero2": ZERO2, "zero3": ZERO3}.items():
        runs[name] = tmp_path / name
        _stages(runs[name], small_benchmark, stages, strategy, 2, steps=3)
    for stage in stages:
        reference, losses = _state(runs["ddp"] / stage), _losses(runs["ddp"] / stage)
        assert len(losses) == 3, losses
        for name in ("zero2", "zero3"):
            state = _state(runs[name] / stage)
            assert state.keys() == reference.keys()
            worst = max((state[k].float().reshape(-1) - reference[k].float().reshape(-1)).abs().max().item()
                        for k in reference if reference[k].is_floating_point())
            print(stage, name, "worst weight difference", worst, "losses", _losses(runs[name] / stage), losses)
            assert worst <= (0.0 if name == "zero2" else ZERO3_WEIGHT_ATOL), (stage, name, worst)
            assert _losses(runs[name] / stage) == pytest.approx(losses, abs=LOSS_ATOL), (stage, name)


def _zero3_fit(bench, run: Path, *extra: str) -> subprocess.Popen:
    """Pretraining on 2 ZeRO-3 CPU ranks (Lightning's own launcher), a step checkpoint every 3 of its 12 steps."""
    return subprocess.Popen(
        [sys.executable, "main.py", "fit", "--config", "configs/embedded/badnet.yaml",
         *[a for f in ZERO3 for a in ("--config", f)], "--trainer.devices", "2", "--trainer.default_root_dir", str(run),
         "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--trainer.num_sanity_val_steps", "0",
         "--torch_threads", "1", "--checkpoint_every_n_steps", "3", "--data.init_args.embedded", "null",
         "--data.init_args.train_shards", bench.pretrain_urls, "--data.init_args.eval.directory", bench.eval_dir,
         "--data.init_args.batch_size", "32", "--data.init_args.num_workers", "1",
         "--model.init_args.optimizer.warmup_steps", "5", *extra],
        cwd=REPO, env={**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
                       "MASTER_PORT": str(_free_port())},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)


def test_a_zero3_run_killed_mid_epoch_resumes_to_the_weights_of_a_straight_run(small_benchmark, tmp_path):
    import signal
    import time

    from lightning_app.checkpointing import WHOLE

    straight = _zero3_fit(small_benchmark, tmp_path / "straight")
    assert straight.wait(timeout=600) == 0, straight.stderr.read()[-3000:]

    run = tmp_path / "killed"
    killed = _zero3_fit(small_benchmark, run)
    deadline = time.monotonic() + 300
    while not list(run.glob(f"checkpoints/step*.ckpt/{WHOLE}")) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)  # both ranks, mid-epoch
    killed.wait()
    assert not (run / "summary.json").exists(), "the run finished before it could be killed"

    resumed = _zero3_fit(small_benchmark, run, "--ckpt_path", "last")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read()[-3000:]
    assert _summary(run)["steps"] == _summary(tmp_path / "straight")["steps"] == 12
    expected, got = _weights(tmp_path / "straight"), _weights(run)
    assert expected.keys() == got.keys()
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, f"{len(different)} of {len(expected)} tensors differ, e.g. {different[:3]}"


def test_pretraining_cleanclip_and_abd_train_under_zero2_in_deepspeeds_bf16(small_benchmark, tmp_path):
    """ZeRO-2 on 2 ranks in DeepSpeed's own bf16 (16-bit weights, fp32 master copy; fp32 ZeRO-2 is checked
    against DDP above). DeepSpeed casts parameters only since 0.19: the tiny RN's BatchNorm with bf16 weights
    and fp32 running statistics failed at its first eval forward until the CLI set `data_types.buffer_dtype`."""
    out = tmp_path / "zero2_bf16"
    _stages(out, small_benchmark, ["pretrain", "cleanclip", "abd_craft", "abd"], ZERO2, 2, precision="bf16-mixed")
    for stage in ("pretrain", "cleanclip", "abd"):
        _trained(out / stage, stage)
        assert "precision: bf16-mixed" in (out / stage / "config.yaml").read_text()
