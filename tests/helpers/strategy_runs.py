"""What the distributed tests share: running the shipped stages under a strategy on CPU ranks
(tests/helpers/fit_stages.py through torch.distributed.run) and reading back what a run wrote."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_stages(out: Path, bench, stages: list[str], strategy: list[str], ranks: int, steps: int = 2,
            precision: str = "32-true") -> None:
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port",
                 str(free_port())] if ranks > 1 else [sys.executable])
    result = subprocess.run([*launcher, str(HELPER), str(out), bench.root, "--devices", str(ranks),
                             "--steps", str(steps), "--precision", precision, "--strategy", *strategy,
                             "--stages", *stages],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    failed = out / "failed.txt"
    assert result.returncode == 0, (failed.read_text() if failed.exists() else result.stderr[-4000:])


def read_summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def weights(run: Path) -> dict[str, torch.Tensor]:
    from modules.core.deepspeed_checkpoint import read_deepspeed_state_dict

    return read_deepspeed_state_dict(run / "checkpoints" / "last.ckpt")


def assert_trained(run: Path, stage: str) -> None:
    """The stage took optimizer steps, its logged objectives are finite, and it measured CA and ASR."""
    summary = read_summary(run)
    assert summary["steps"] >= 1, stage
    if stage not in NOT_EVALUATED:
        assert 0.0 <= summary["ca_top1"] <= 1.0 and 0.0 <= summary["asr"] <= 1.0, (stage, summary["ca_top1"], summary["asr"])
    losses = [float(value) for row in metrics(run) for name, value in row.items()
              if value and name.endswith(("loss", "objective"))]
    assert losses and all(math.isfinite(x) for x in losses), (stage, losses)


def metrics(run: Path) -> list[dict]:
    import csv

    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))
