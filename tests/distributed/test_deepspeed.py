"""DeepSpeed: every strategy config builds a trainer; ZeRO checkpoints (made for real on CPU by
DeepSpeed itself) convert to the model's fp32 weights and load as `model.pretrained`; a checkpoint
carrying a pickled payload is refused without running it. Fits under DeepSpeed: tests/test_strategy_stages.py."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.repo import REPO
from safetensors.torch import load_file

from lightning_app.cli import BackdoorCLI
from modules.core.deepspeed_checkpoint import is_deepspeed_checkpoint, read_deepspeed_state_dict
from modules.core.deepspeed_checkpoint import main as convert_main
from modules.core.model_loading import ModelConfig, build_model

STRATEGIES = sorted(str(p) for p in Path("configs/strategies").glob("deepspeed_*.yaml"))
HELPER = REPO / "tests" / "helpers" / "make_zero_checkpoint.py"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_deepspeed_configs_build_a_deepspeed_trainer_with_the_data_batch_size(strategy, tmp_path):
    from lightning.pytorch.strategies import DeepSpeedStrategy

    args = ["--config", "configs/cc3m/pretrain_badnet.yaml", "--config", strategy,
            "--trainer.default_root_dir", str(tmp_path), "--data.init_args.batch_size", "96"]
    if not torch.cuda.is_available():
        args += ["--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    cli = BackdoorCLI(args=args, run=False)
    assert isinstance(cli.trainer.strategy, DeepSpeedStrategy)
    assert cli.trainer.strategy.config["train_micro_batch_size_per_gpu"] == 96
    stage = int(Path(strategy).stem.split("zero")[1][0])
    assert cli.trainer.strategy.config["zero_optimization"]["stage"] == stage


@pytest.fixture(scope="module", params=[2, 3])
def zero_checkpoint(request, tmp_path_factory):
    pytest.importorskip("deepspeed")
    out = tmp_path_factory.mktemp(f"zero{request.param}")
    subprocess.run([sys.executable, str(HELPER), str(request.param), str(out)], check=True,
                   env={**__import__("os").environ, "MASTER_PORT": str(29561 + request.param)},
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return out


def test_zero_checkpoint_converts_to_the_engines_fp32_weights(zero_checkpoint, tmp_path):
    checkpoint = zero_checkpoint / "last.ckpt"
    assert is_deepspeed_checkpoint(checkpoint)
    expected = {k.removeprefix("_forward_module."): v for k, v in load_file(zero_checkpoint / "expected.safetensors").items()}
    state = read_deepspeed_state_dict(checkpoint)
    assert state.keys() == expected.keys()
    for name, value in expected.items():  # (a scalar parameter comes back in its ZeRO storage shape [1])
        assert state[name].numel() == value.numel(), name
        torch.testing.assert_close(state[name].reshape(value.shape), value, rtol=0, atol=0, msg=name)

    convert_main([str(checkpoint), str(tmp_path / "model.safetensors")])
    assert load_file(tmp_path / "model.safetensors").keys() == expected.keys()

    # a defense can start from the checkpoint directory directly
    model, _ = build_model(ModelConfig(name="configs/models/tiny-rn32.json", pretrained=str(checkpoint)))
    torch.testing.assert_close(model.visual.conv1.weight, expected["model.visual.conv1.weight"], rtol=0, atol=0)
    assert model.logit_scale.ndim == 0 and model.logit_scale.item() == expected["model.logit_scale"].item()


class _Payload:
    def __reduce__(self):
        return (exec, ("open(__import__('os').environ['PAYLOAD_MARK'], 'w').write('ran')",))


def test_zero_checkpoint_with_a_pickled_payload_is_refused_without_running_it(zero_checkpoint, tmp_path, monkeypatch):
    import shutil

    poisoned = tmp_path / "last.ckpt"
    shutil.copytree(zero_checkpoint / "last.ckpt", poisoned)
    states = next((poisoned / "checkpoint").glob("*model_states.pt"))
    data = torch.load(states, weights_only=False)  # our own fixture, trusted
    data["payload"] = _Payload()
    torch.save(data, states, pickle_module=pickle)
    mark = tmp_path / "mark"
    monkeypatch.setenv("PAYLOAD_MARK", str(mark))
    with pytest.raises(ValueError, match="untrusted"):
        read_deepspeed_state_dict(poisoned)
    assert not mark.exists()


@pytest.mark.parametrize("strategy", [None, "configs/strategies/deepspeed_zero2.yaml", "configs/strategies/deepspeed_zero3.yaml"])
def test_channels_last_weights_only_where_deepspeed_does_not_own_them(strategy, tmp_path):
    """The cc3m recipe sets channels_last: its convolution kernels go channels_last at setup under DDP or one
    device, and stay contiguous under DeepSpeed, whose engine views every parameter as bytes to broadcast
    it (a channels_last kernel refuses) and re-stores them in its own flat buffers; the images are
    channels_last either way."""
    from lightning_app.strategies import CPUDeepSpeedStrategy

    args = ["--config", "configs/cc3m/pretrain_badnet.yaml", "--trainer.default_root_dir", str(tmp_path),
            "--model.init_args.model.name", "configs/models/tiny-rn32.json", "--trainer.accelerator", "cpu",
            "--trainer.devices", "1", "--trainer.strategy", "auto", "--trainer.precision", "32-true"]
    if strategy is not None:
        args += ["--config", strategy, "--config", "configs/strategies/cpu.yaml"]
    cli = BackdoorCLI(args=args, run=False)
    assert cli.model.model_config.channels_last
    assert isinstance(cli.trainer.strategy, CPUDeepSpeedStrategy) == (strategy is not None)
    cli.model._trainer = cli.trainer
    cli.model.setup("fit")
    kernel = cli.model.model.visual.conv1.weight
    assert kernel.is_contiguous(memory_format=torch.channels_last) == (strategy is None)
    assert kernel.is_contiguous() == (strategy is not None)
    assert cli.model._images(torch.zeros(2, 3, 32, 32)).is_contiguous(memory_format=torch.channels_last)
    if strategy is not None:
        zero = cli.trainer.strategy.config["zero_optimization"]
        assert zero["stage"] == int(Path(strategy).stem[-1]) and zero["stage3_param_persistence_threshold"] == 0
