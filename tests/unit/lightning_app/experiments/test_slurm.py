"""The SLURM launcher (lightning_app/experiments/slurm.py) without a cluster: a stage's job shape from its
config, the sbatch script submitit writes for it (through submitit's own SLURM executor, with a stand-in
`srun` on PATH), the `launcher:` block checked at load, and a preempted job's fit signalled to checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from helpers.experiments import toy

from lightning_app.experiments.slurm import FORWARDED_SIGNAL, FitJob, SlurmSettings, job_parameters, job_shape
from lightning_app.pipelines import Stage


def _stage(tmp_path, config="configs/cc3m/pretrain_badnet.yaml", overrides=()):
    return Stage("pretrain", config, str(tmp_path / "run"), list(overrides))


def test_a_stage_gets_the_devices_and_nodes_its_config_fixes_else_the_launchers(tmp_path):
    settings = SlurmSettings(gpus_per_node=8)
    # cc3m: devices auto, num_nodes 1 → the launcher's 8 GPUs per node, and the config's one node
    assert job_shape(_stage(tmp_path), settings) == {"nodes": 1, "tasks_per_node": 8, "gpus_per_node": 8}
    two_nodes = _stage(tmp_path, overrides=["--trainer.num_nodes", "2", "--trainer.devices", "4"])
    assert job_shape(two_nodes, settings) == {"nodes": 2, "tasks_per_node": 4, "gpus_per_node": 4}
    # the embedded recipe trains on one CPU device: one task, no GPU
    cpu = _stage(tmp_path, "configs/embedded/badnet.yaml")
    assert job_shape(cpu, settings) == {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": 0}


def test_the_sbatch_script_asks_for_the_runs_shape_and_a_signal_before_the_limit(tmp_path, monkeypatch):
    import submitit

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    settings = SlurmSettings(partition="gpu", time_min=720, gpus_per_node=8, cpus_per_task=10, account="lab",
                             additional={"exclusive": True})
    executor = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    executor.update_parameters(**job_parameters(_stage(tmp_path, overrides=["--trainer.num_nodes", "2"]), settings))
    script = executor._executor._make_submission_file_text("python -m job", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --time=720", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8",
                 "#SBATCH --gpus-per-node=8", "#SBATCH --cpus-per-task=10", "#SBATCH --account=lab",
                 "#SBATCH --signal=USR2@120", "#SBATCH --exclusive", "#SBATCH --job-name=fit:pretrain"):
        assert line in script, line


def test_a_mistake_in_the_launcher_block_is_refused_at_load(tmp_path):
    from helpers.experiments import TOY

    with pytest.raises(ValueError, match=r"unknown launcher key\(s\) \['partion'\]"):
        toy(tmp_path, TOY + "launcher: {{partion: gpu}}\n")
    with pytest.raises(ValueError, match="launcher executor 'kubernetes'"):
        toy(tmp_path, TOY + "launcher: {{executor: kubernetes}}\n")
    assert toy(tmp_path, TOY + "launcher: {{partition: gpu, time_min: 60}}\n").launcher == {"partition": "gpu",
                                                                                             "time_min": 60}


def test_a_preempted_job_signals_its_fit_waits_for_it_and_resubmits_a_fresh_job(tmp_path):
    # a stand-in fit that, like the training guard, exits 128 + the signal once it has saved its checkpoint
    saved = tmp_path / "saved"
    child = subprocess.Popen([sys.executable, "-c", (
        "import signal, sys, time, pathlib\n"
        f"signal.signal({int(FORWARDED_SIGNAL)}, lambda *a: (pathlib.Path({str(saved)!r}).write_text('step'), "
        f"sys.exit(128 + {int(FORWARDED_SIGNAL)})))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "ready"
    job = FitJob(_stage(tmp_path, "configs/embedded/badnet.yaml"), grace_s=30)
    job._started(child)
    start = time.monotonic()
    resubmission = job.checkpoint()
    assert time.monotonic() - start < 30 and saved.read_text() == "step"  # it waited for the fit to exit
    assert child.wait(timeout=5) == 128 + signal.SIGUSR1
    fresh = resubmission.function
    assert isinstance(fresh, FitJob) and fresh is not job and fresh._process is None
    assert fresh.stage == job.stage


def test_the_launcher_blocks_the_docs_show_are_valid():
    """Each ```yaml block of README.md and docs/experiments.md that holds a `launcher:` block loads as
    SlurmSettings (a renamed or misspelt key in the documented example fails here)."""
    import re

    import yaml
    from helpers.repo import REPO

    found = 0
    for page in ("README.md", "docs/experiments.md"):
        for block in re.findall(r"```yaml\n(.*?)```", (REPO / page).read_text(), flags=re.S):
            parsed = yaml.safe_load(block)
            if isinstance(parsed, dict) and "launcher" in parsed:
                settings = SlurmSettings.from_mapping(parsed["launcher"], page)
                assert settings.partition == "gpu" and settings.gpus_per_node == 8, page
                found += 1
    assert found >= 2, "README.md and docs/experiments.md each show a launcher: block"
