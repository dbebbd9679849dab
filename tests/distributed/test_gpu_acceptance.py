"""(slow) benchmarks/gpu_acceptance.py: its CPU smoke mode runs the GPU acceptance code path (its ZeRO-3 arm on
2 CPU processes with the cc3m configs' channels_last, a step checkpoint, a resume, the CA/ASR pass) and prints
its figures; without CUDA and without --cpu-smoke it exits cleanly. The DDP and ZeRO-2 arms run the same
script path; those strategies themselves are tested in tests/test_strategy_stages.py (one arm here saves the
suite ~100 s)."""

import subprocess
import sys

import pytest
import torch


def test_cpu_smoke_runs_the_acceptance_path_and_prints_its_figures():
    result = subprocess.run([sys.executable, "benchmarks/gpu_acceptance.py", "--cpu-smoke", "--strategies",
                             "deepspeed_zero3"], capture_output=True, text=True, timeout=900)
    print(result.stdout[-2000:])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for strategy in ("deepspeed_zero3",):
        row = next(line for line in result.stdout.splitlines() if line.startswith(f"| {strategy} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == "16", row  # resumed to the full step count
        assert float(cells[2]) > 0, row  # img/s per device
        assert 0.0 <= float(cells[4]) <= 1.0 and 0.0 <= float(cells[5]) <= 1.0, row  # CA, ASR
    assert "skipped" not in result.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_without_cuda_it_says_so_and_exits_cleanly():
    result = subprocess.run([sys.executable, "benchmarks/gpu_acceptance.py"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    assert "no CUDA" in result.stdout
