"""(slow) benchmarks/gpu_acceptance.py: its CPU smoke mode runs the GPU acceptance code path (DDP on 2 CPU
processes, a step checkpoint, a resume, the CA/ASR pass) and prints its figures; without CUDA and
without --cpu-smoke it exits cleanly."""

import subprocess
import sys

import pytest
import torch


@pytest.mark.slow
def test_cpu_smoke_runs_the_acceptance_path_and_prints_its_figures():
    result = subprocess.run([sys.executable, "benchmarks/gpu_acceptance.py", "--cpu-smoke"], capture_output=True,
                            text=True, timeout=900)
    print(result.stdout[-2000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith("| ddp |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "16"  # resumed to the full step count
    assert float(cells[2]) > 0  # img/s per device
    assert 0.0 <= float(cells[4]) <= 1.0 and 0.0 <= float(cells[5]) <= 1.0  # CA, ASR
    assert "deepspeed_zero2 | skipped" in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_without_cuda_it_says_so_and_exits_cleanly():
    result = subprocess.run([sys.executable, "benchmarks/gpu_acceptance.py"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "no CUDA" in result.stdout
