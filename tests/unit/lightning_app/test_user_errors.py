"""Bad input is refused with one line naming the file, key or option (fault probes of a careful user)."""

from __future__ import annotations

import json
import os
import random
import re

import pytest
import torch

from datamodules.run_dir import RunDir
from lightning_app.cli import main
from lightning_app.user_errors import DEBUG_ENV
from modules.core.model_loading import ModelConfig, UnsafeCheckpointError, build_model, read_state_dict

TINY = "configs/models/tiny-rn32.json"


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo payload-ran",))


def _error_line(capsys, args: list[str], monkeypatch) -> str:
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") <= 3, err
    return err.splitlines()[0]


@pytest.mark.parametrize("content, message", [
    (b"model:\n  class_path: x\n   bad: [\n", r"bad.yaml, line 3 column 7: not valid YAML"),
    (b"a: 1\0\n", r"bad.yaml: holds NUL bytes \(at byte 4\)"),
    (bytes(range(128, 256)), r"bad.yaml: not UTF-8 text \(byte 0\)"),
])
def test_a_broken_config_file_is_named_with_its_line(tmp_path, capsys, monkeypatch, content, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    line = _error_line(capsys, ["fit", "--config", str(path)], monkeypatch)
    assert line.startswith("error: config ") and re.search(message, line), line


def test_a_config_value_error_is_one_line_naming_the_key(tmp_path, capsys, monkeypatch):
    line = _error_line(capsys, ["fit", "--config", "configs/embedded/badnet.yaml", "--model.init_args.optimizer.lr",
                                "-0.1", "--trainer.default_root_dir", str(tmp_path / "run")], monkeypatch)
    assert line.startswith("error: model.optimizer: out of range: lr -0.1"), line
    assert not (tmp_path / "run").exists()


def test_a_ckpt_path_with_a_pickle_payload_is_refused_naming_the_file(tmp_path, capsys, monkeypatch):
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save({"state_dict": {}, "x": _Payload()}, checkpoints / "evil.ckpt")
    line = _error_line(capsys, ["fit", "--config", "configs/embedded/badnet.yaml", "--trainer.default_root_dir",
                                str(tmp_path / "run"), "--ckpt_path", str(checkpoints / "evil.ckpt")], monkeypatch)
    assert f"--ckpt_path {checkpoints / 'evil.ckpt'}: not a checkpoint that loads as plain weights" in line
    assert "payload-ran" not in capsys.readouterr().out


def test_a_local_dir_model_with_a_pickle_payload_is_refused_naming_the_folder(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    config = json.loads(open(TINY).read())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config, "preprocess_cfg": {}}))
    torch.save({"x": _Payload()}, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match=rf"local-dir:{folder}'.*GLOBAL posix.system"):
        build_model(ModelConfig(name=f"local-dir:{folder}"))


@pytest.mark.parametrize("content", [random.Random(0).randbytes(1000), (2**40).to_bytes(8, "little") + b"{}"],
                         ids=["random_bytes", "header_length_past_the_end"])
def test_a_broken_safetensors_file_is_named(tmp_path, content):
    path = tmp_path / "weights.safetensors"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"model.pretrained: {path} is not a readable safetensors file"):
        read_state_dict(path)


def test_a_truncated_summary_is_named_not_a_bare_json_error(tmp_path):
    run = RunDir(tmp_path)
    run.summary_path.write_text(json.dumps({"ca_top1": 0.5, "asr": 0.1}, indent=1)[:20])
    with pytest.raises(ValueError, match=rf"{run.summary_path} is not a whole summary"):
        run.summary()

