"""The SLURM launcher's code path on this machine, through submitit's local executor (the same FitJob,
submission records and requeue as on a cluster): a two-stage chain runs as jobs and a second invocation
reuses it without a job; a job preempted mid-fit saves a step checkpoint, is requeued and resumes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import yaml

from lightning_app.experiments import runner
from lightning_app.experiments.expansion import expand, pipeline_stage
from lightning_app.experiments.loading import load_experiment
from lightning_app.experiments.slurm import SlurmSettings, make_executor, submit

LOCAL = SlurmSettings(executor="local", time_min=20)


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _small(bench, epochs: int = 1) -> dict:
    return {"data.init_args.embedded": None, "data.init_args.eval.directory": bench.eval_dir,
            "data.init_args.eval.max_samples": 100, "data.init_args.batch_size": 32,
            "trainer.enable_progress_bar": False, "trainer.max_epochs": epochs, "trainer.num_sanity_val_steps": 0}


def _chain(tmp_path, bench, epochs: int = 1, attack_only: bool = False):
    stages = {"attack": {"config": "configs/embedded/badnet.yaml", "set": {
        **_small(bench, epochs), "data.init_args.train_shards": bench.pretrain_urls, "data.init_args.poison.rate": 0.1}}}
    if not attack_only:
        stages["ft"] = {"config": "configs/embedded/ft.yaml", "from": "attack",
                        "set": {**_small(bench), "data.init_args.train_shards": bench.finetune_urls}}
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump({"name": "chain", "runs": str(tmp_path / "runs"), "seeds": [0], "stages": stages,
                                    "tables": [{"block": "chain", "rows": ["stage"], "columns": ["ca_top1", "asr"]}]}))
    return load_experiment(path)


def test_a_chain_runs_as_jobs_and_a_second_invocation_reuses_it_without_one(tmp_path, small_benchmark):
    experiment = _chain(tmp_path, small_benchmark)
    rows = runner.run_experiment(experiment, slurm=LOCAL)
    attack, ft = expand(experiment)
    assert [row["stage"] for row in rows] == ["attack", "ft"]
    assert ft.run_dir.config["model"]["init_args"]["model"]["pretrained"] == str(attack.run_dir.checkpoint)
    for run in (attack, ft):
        records = json.loads((run.run_dir.path / "launcher.json").read_text())
        assert len(records) == 1 and records[0]["tasks_per_node"] == 1 and records[0]["gpus_per_node"] == 0
        assert Path(records[0]["stdout"]).exists(), records[0]
    stamp = ft.run_dir.summary_path.stat().st_mtime_ns
    runner.run_experiment(experiment, slurm=LOCAL)
    assert ft.run_dir.summary_path.stat().st_mtime_ns == stamp
    assert len(json.loads((ft.run_dir.path / "launcher.json").read_text())) == 1  # reused: no job submitted


def test_a_preempted_job_saves_a_step_checkpoint_is_requeued_and_resumes(tmp_path, small_benchmark):
    experiment = _chain(tmp_path, small_benchmark, epochs=3, attack_only=True)
    (run,) = expand(experiment)
    stage = pipeline_stage(run)
    stage.check_or_record_fingerprint()
    job = submit(make_executor(LOCAL, experiment.runs), stage, LOCAL)
    checkpoints = run.run_dir.path / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("epoch000-*.ckpt")) and job.state not in ("DONE", "FAILED") \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # into epoch 1
    # what SLURM does before preemption or the time limit: signal the job's task (submitit asks for USR2). The
    # local executor's own `_interrupt` signals its controller process instead, which does not forward USR2.
    (task,) = _children(job._process.pid)
    os.kill(task, signal.SIGUSR2)
    summary = job.result()
    assert summary["steps"] == 3 * 25 and summary["epochs"] == 3  # 800 pairs, batch 32: 25 steps an epoch
    assert any(checkpoints.glob("step*.ckpt")), sorted(p.name for p in checkpoints.iterdir())
    log = Path(job.paths.stderr).read_text() + Path(job.paths.stdout).read_text()
    assert "Requeued" in log, log[-3000:]
    runs = [line for line in log.splitlines() if "running:" in line]
    assert len(runs) == 2 and "--ckpt_path last" not in runs[0] and runs[1].endswith("fit.log)") \
        and "--ckpt_path last" in runs[1], runs
