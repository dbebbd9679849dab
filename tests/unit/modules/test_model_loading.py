import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from modules.core.model_loading import ModelConfig, UnsafeCheckpointError, build_model, read_state_dict

TINY = "configs/models/tiny-rn32.json"


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch " + _Exploit.marker,))


def test_malicious_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    _Exploit.marker = str(marker)
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": _Exploit()}}, f)
    with pytest.raises(UnsafeCheckpointError, match="weights_only"):
        read_state_dict(path)
    assert not marker.exists()


def test_weights_round_trip_through_safetensors_and_lightning_ckpt(tmp_path):
    model, _ = build_model(ModelConfig(TINY))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 3}, tmp_path / "w.ckpt")
    for name in ("w.safetensors", "w.ckpt"):
        loaded, _ = build_model(ModelConfig(TINY, pretrained=str(tmp_path / name)))
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, state[key]), (name, key)


def test_mismatched_weights_name_the_file(tmp_path):
    save_file({"foo": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="other.safetensors"):
        build_model(ModelConfig(TINY, pretrained=str(tmp_path / "other.safetensors")))


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ValueError, match="model.name"):
        build_model(ModelConfig("NotAModel-42"))


def test_input_spec_follows_the_model_config():
    _, spec = build_model(ModelConfig(TINY))
    assert spec.image_size == 32
    assert spec.tokenizer(["a red star"]).shape == (1, 16)


def test_shrink_and_perturb_is_the_weighted_sum_of_the_weights_and_a_fresh_initialisation(tmp_path):
    import torch

    from modules.core.model_loading import ModelConfig, _random_twin, build_model

    plain, _ = build_model(ModelConfig(name="configs/models/tiny-rn32.json"))
    path = tmp_path / "w.pt"
    torch.save(plain.state_dict(), path)
    shrunk, _ = build_model(ModelConfig(name="configs/models/tiny-rn32.json", pretrained=str(path), shrink=0.95,
                                        perturb=1e-4, perturb_seed=3))
    fresh = dict(_random_twin("tiny-rn32", 3).named_parameters())
    for name, param in shrunk.named_parameters():
        expected = 0.95 * dict(plain.named_parameters())[name] + 1e-4 * fresh[name]
        assert torch.allclose(param, expected, atol=1e-7), name
    buffers = dict(plain.named_buffers())
    for name, buffer in shrunk.named_buffers():
        assert torch.equal(buffer, buffers[name]), name  # BatchNorm statistics untouched


def test_shrink_out_of_range_fails_naming_the_option():
    import pytest

    from modules.core.model_loading import ModelConfig

    with pytest.raises(ValueError, match="model.shrink"):
        ModelConfig(shrink=1.5)


def test_a_torchscript_archive_is_refused_before_anything_is_loaded(tmp_path, monkeypatch):
    scripted = tmp_path / "ViT-B-32.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(scripted))
    plain = tmp_path / "plain.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), plain)

    def never(*args, **kwargs):
        raise AssertionError("a TorchScript archive reached a loader")

    monkeypatch.setattr(torch.jit, "load", never)
    with pytest.raises(UnsafeCheckpointError, match="TorchScript archive"):
        read_state_dict(scripted)
    assert sorted(read_state_dict(plain)) == ["bias", "weight"]
