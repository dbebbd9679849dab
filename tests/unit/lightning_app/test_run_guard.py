"""A run's record: one fit per run directory at a time, no resume under another attack, write-once
poison manifest and trigger, one last.ckpt, step checkpoints pruned across resumes, no `.partial`
left by a failed write.

The fits of these tests: tests/integration/test_run_guard_fit.py."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers.repo import REPO
from helpers.run_guard import _args, _corrupt_one_eval_image
from lightning.fabric.plugins import TorchCheckpointIO

from datamodules.run_dir import RunDir, write_once
from lightning_app.checkpointing import AtomicCheckpointIO, prune_step_checkpoints
from lightning_app.cli import BackdoorCLI
from lightning_app.run_guard import RunLock, refuse_changed_attack, refuse_foreign_checkpoint


def test_a_second_fit_into_a_locked_run_directory_fails_at_once_naming_the_holder(small_benchmark, tmp_path):
    run_dir = tmp_path / "run"
    lock = RunLock(run_dir)  # this process holds the directory, as a running fit would
    try:
        result = subprocess.run([sys.executable, str(REPO / "main.py"), *_args(small_benchmark, run_dir)],
                                cwd=REPO, capture_output=True, text=True, timeout=300)
    finally:
        lock.release()
    assert result.returncode != 0
    import os
    assert f"is in use by pid {os.getpid()}" in result.stderr
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "poison").exists()


def test_a_lock_file_left_by_a_dead_process_is_taken_over(tmp_path):
    (tmp_path / ".lock").write_text("pid 999999 on elsewhere since 2020-01-01 00:00:00")
    lock = RunLock(tmp_path)  # no process holds the flock: the record is stale
    assert (tmp_path / ".lock").read_text().startswith("pid ")
    with pytest.raises(ValueError, match="is in use by pid"):
        RunLock(tmp_path)
    lock.release()
    RunLock(tmp_path).release()


def test_write_once_refuses_other_content_and_accepts_the_same(tmp_path):
    path = tmp_path / "poison" / "manifest.json"
    write_once(path, b'{"keys": ["a"]}', "poison manifest")
    write_once(path, b'{"keys": ["a"]}', "poison manifest")
    with pytest.raises(ValueError, match="poison manifest .*manifest.json was written by an earlier fit"):
        write_once(path, b'{"keys": ["b"]}', "poison manifest")
    assert path.read_bytes() == b'{"keys": ["a"]}'


def test_resume_config_check_names_every_changed_attack_key(tmp_path):
    run = RunDir(tmp_path)
    saved = {"seed_everything": 0, "model": {"init_args": {"model": {"name": "tiny"}}},
             "data": {"init_args": {"train_shards": "a", "poison": {"rate": 0.05, "target": "triangle"},
                                    "trigger": {"class_path": "BadNet"}}},
             "trainer": {"max_epochs": 20}}
    run.config_path.write_text(json.dumps(saved))
    refuse_changed_attack(run, {**saved, "trainer": {"max_epochs": 30}})  # more epochs: a resume may do that
    changed = json.loads(json.dumps(saved))
    changed["data"]["init_args"]["poison"]["target"] = "star"
    changed["data"]["init_args"]["trigger"] = {"class_path": "Blended"}
    with pytest.raises(ValueError, match=r"data.init_args.poison.target: 'triangle' → 'star'; "
                                         r"data.init_args.trigger.class_path: 'BadNet' → 'Blended'"):
        refuse_changed_attack(run, changed)
    for key, value in (("class_path", "modules.CleanCLIP"), ("init_args", {"model": {"name": "tiny"}, "objective": "cyclip"})):
        changed = json.loads(json.dumps(saved))
        changed["model"][key] = value
        with pytest.raises(ValueError, match=r"model\.(class_path|init_args\.objective): None → "):
            refuse_changed_attack(run, changed)
    changed = json.loads(json.dumps(saved))
    changed["data"]["init_args"]["exclude"] = {"ranking": "r.json"}  # None (absent) against a dict
    with pytest.raises(ValueError, match=r"data.init_args.exclude: None → \{'ranking'"):
        refuse_changed_attack(run, changed)
    changed = json.loads(json.dumps(saved))
    changed["data"]["init_args"]["eval"] = {"directory": "other"}  # evaluated elsewhere: a resume may
    refuse_changed_attack(run, {**changed, "torch_threads": 2, "checkpoint_every_n_steps": 5})


def test_a_checkpoint_of_another_run_is_refused_naming_pretrained(tmp_path):
    run = RunDir(tmp_path / "run")
    refuse_foreign_checkpoint(run, "last")
    refuse_foreign_checkpoint(run, str(tmp_path / "run" / "checkpoints" / "step0000010.ckpt"))
    with pytest.raises(ValueError, match="not a checkpoint of this run .*model.pretrained"):
        refuse_foreign_checkpoint(run, str(tmp_path / "other" / "checkpoints" / "last.ckpt"))
    with pytest.raises(ValueError, match="not a checkpoint of this run"):
        refuse_foreign_checkpoint(run, str(tmp_path / "run" / "checkpoints" / ".." / ".." / "other.ckpt"))


def test_step_checkpoints_are_pruned_by_step_number_whoever_wrote_them(tmp_path):
    for step in (5, 10, 15, 100, 20):
        (tmp_path / f"step{step:07d}.ckpt").write_bytes(b"")
    (tmp_path / "last.ckpt").write_bytes(b"")
    prune_step_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "step0000020.ckpt", "step0000100.ckpt"]


def test_a_deepspeed_checkpoint_directory_counts_for_resume_only_once_marked_whole(tmp_path):
    import time

    from lightning_app.checkpointing import WHOLE, newest_checkpoint

    older, cut = tmp_path / "step0000004.ckpt", tmp_path / "step0000008.ckpt"
    for directory in (older, cut):
        (directory / "checkpoint").mkdir(parents=True)
        (directory / "latest").write_text("checkpoint")  # DeepSpeed's own tag: rank 0 writes it early
        if directory == older:
            (older / WHOLE).touch()
        time.sleep(0.01)
    assert newest_checkpoint(tmp_path) == older  # the newer one was cut off while saving
    (cut / WHOLE).touch()
    assert newest_checkpoint(tmp_path) == cut


def test_deepspeed_step_checkpoints_are_directories_and_are_pruned_too(tmp_path):
    for step in (4, 8, 12):
        (tmp_path / f"step{step:07d}.ckpt" / "checkpoint").mkdir(parents=True)
        (tmp_path / f"step{step:07d}.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt").write_bytes(b"")
    prune_step_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step0000008.ckpt", "step0000012.ckpt"]


def test_a_failed_checkpoint_write_leaves_no_partial_and_a_stale_one_does_not_block(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"

    def disk_full(self, checkpoint, path, storage_options=None):
        Path(path).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", disk_full)
    with pytest.raises(OSError):
        AtomicCheckpointIO().save_checkpoint({"x": 1}, target)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    (tmp_path / "last.ckpt.partial").write_bytes(b"stale")
    AtomicCheckpointIO().save_checkpoint({"x": 1}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


@pytest.mark.parametrize("extra, message", [
    (["--model.init_args.optimizer.lr", "-0.1"], "model.optimizer: out of range: lr -0.1"),
    (["--data.init_args.eval.batch_size", "0"], "data.eval.batch_size"),
    (["--data.init_args.train_shards", ""], "data.train_shards is empty"),
    (["--trainer.max_epoch", "3"], "unrecognized arguments: --trainer.max_epoch"),
])
def test_bad_values_fail_before_the_run_directory_is_written(small_benchmark, tmp_path, extra, message, capsys):
    run_dir = tmp_path / "run"
    with pytest.raises((ValueError, SystemExit)) as failure:
        BackdoorCLI(args=_args(small_benchmark, run_dir, *extra))
    assert message in str(failure.value) + capsys.readouterr().err
    assert not run_dir.exists()


def test_a_trigger_larger_than_the_input_is_refused_before_the_first_step(small_benchmark, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(ValueError, match="trigger.init_args.size: a BadNet patch of 40px does not fit"):
        BackdoorCLI(args=_args(small_benchmark, run_dir, "--data.init_args.trigger.init_args.size", "40"))
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.csv").exists()


def test_a_weight_file_of_another_shape_is_named_with_its_first_mismatched_tensor(tmp_path):
    import torch
    from safetensors.torch import save_file

    from modules.core.model_loading import ModelConfig, build_model

    model, _ = build_model(ModelConfig(name="configs/models/tiny-rn32.json"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["token_embedding.weight"] = torch.zeros(3, 3)
    save_file(state, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"w.safetensors does not fit .* first token_embedding.weight \(3, 3\)"):
        build_model(ModelConfig(name="configs/models/tiny-rn32.json", pretrained=str(tmp_path / "w.safetensors")))


def test_a_corrupt_eval_image_is_skipped_and_counted_not_fatal(small_benchmark, tmp_path):
    import torch

    from datamodules.eval_config import EvalSetConfig
    from datamodules.transforms import InputSpec
    from datamodules.zeroshot import SKIPPED, ZeroShotSet
    from modules.core.set_evaluation import ClassificationEvaluation

    eval_dir, key = _corrupt_one_eval_image(Path(small_benchmark.eval_dir), tmp_path)
    spec = InputSpec(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, tokenizer=None)
    data = ZeroShotSet(EvalSetConfig(directory=str(eval_dir)), spec, None)
    labels = [data[i]["label"] for i in range(len(data))]
    assert [data.items[i][0] for i, label in enumerate(labels) if label == SKIPPED] == [key]

    evaluator = ClassificationEvaluation(SimpleNamespace(classnames=["a", "b"]), {}, torch.device("cpu"))
    evaluator.update({"classifier": torch.eye(2), "label": torch.tensor([0, SKIPPED, 1]),
                      "clean": torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])})
    assert evaluator.skipped == 1 and evaluator.metrics["ca_top1"].compute().item() == 0.5
    assert evaluator.metrics["cohesion_clean"].compute().item() == 1.0  # the unreadable image's features left out


@pytest.mark.parametrize("label", [b"99", b"-3"])
def test_an_eval_label_outside_the_classes_is_refused_when_the_set_is_indexed(small_benchmark, tmp_path, label):
    import io
    import shutil
    import tarfile

    from datamodules.eval_config import EvalSetConfig
    from datamodules.transforms import InputSpec
    from datamodules.zeroshot import ZeroShotSet

    copy = tmp_path / "eval"
    shutil.copytree(small_benchmark.eval_dir, copy)
    shard = copy / "test" / "0.tar"
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    member = [m for m, _ in members if m.name.endswith(".cls")][3]
    with tarfile.open(shard, "w") as tar:  # the shard rewritten with that label replaced
        for m, payload in members:
            payload = label if m is member else payload
            m.size = len(payload)
            tar.addfile(m, io.BytesIO(payload))
    spec = InputSpec(image_size=32, mean=(0.5,) * 3, std=(0.5,) * 3, tokenizer=None)
    key = member.name.split(".")[0]
    with pytest.raises(ValueError, match=rf"eval label {int(label)} of .*0.tar:{key} is not a class index"):
        ZeroShotSet(EvalSetConfig(directory=str(copy)), spec, None)


def test_an_eval_set_of_no_samples_is_refused():
    from datamodules.eval_config import EvalSetConfig

    with pytest.raises(ValueError, match="data.eval.max_samples must be ≥ 1"):
        EvalSetConfig(max_samples=0)
