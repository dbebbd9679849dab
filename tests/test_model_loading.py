import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from modules.model_loading import ModelConfig, UnsafeCheckpointError, build_model, read_state_dict

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
