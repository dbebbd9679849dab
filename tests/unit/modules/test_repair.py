"""Targeted repair: which rows carry the recovered trigger, that only those change, and the loss terms."""

from __future__ import annotations

import pytest
import torch

from datamodules.poison import MaskedPattern
from modules.cleaning.repair import TriggerRepair, stamp_rows, stamping_trigger
from modules.core.model_loading import ModelConfig


def test_stamped_rows_are_a_function_of_key_and_seed_at_the_asked_share():
    keys = [f"{i:09d}" for i in range(2000)]
    rows = stamp_rows(keys, 0.25, seed=0)
    assert 0.2 < len(rows) / len(keys) < 0.3
    assert rows == stamp_rows(keys, 0.25, seed=0) and rows != stamp_rows(keys, 0.25, seed=1)
    assert set(stamp_rows(keys, 0.1, seed=0)) <= set(rows)


def _repair(tmp_path, **kwargs) -> TriggerRepair:
    mask = torch.zeros(1, 32, 32)
    mask[0, :8, :8] = 1.0
    MaskedPattern.from_tensors(mask, torch.ones(3, 32, 32)).save(tmp_path / "trigger", 32)
    module = TriggerRepair(ModelConfig(name="configs/models/tiny-rn32.json"), recovered_trigger=str(tmp_path / "trigger"),
                           **kwargs)
    module.trigger = MaskedPattern.from_tensors(mask, torch.ones(3, 32, 32))
    return module


@pytest.mark.filterwarnings("ignore::UserWarning")  # self.log outside a Trainer
def test_only_the_chosen_rows_carry_the_recovered_trigger(tmp_path):
    module = _repair(tmp_path, stamp_fraction=0.5)
    seen = []
    encode = module.encode_image
    module.encode_image = lambda images: seen.append(images.clone()) or encode(images)
    keys = [f"{i:09d}" for i in range(16)]
    images = torch.randn(16, 3, 32, 32)
    batch = {"image": images, "key": keys, "text": module.input_spec().tokenizer(["a red circle"] * 16)}
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
    rows = set(stamp_rows(keys, 0.5, 0))
    assert 0 < len(rows) < 16
    trained = seen[0]
    for i in range(16):
        changed = not torch.allclose(trained[i], images[i])
        assert changed == (i in rows)
        assert torch.allclose(trained[i][:, 8:, 8:], images[i][:, 8:, 8:], atol=1e-5)  # outside the mask: untouched
    assert torch.allclose(seen[1], images[sorted(rows)])  # the consistency target: the same rows, clean


def test_a_repair_without_a_recovered_trigger_fails_naming_the_option():
    with pytest.raises(ValueError, match="recovered_trigger"):
        TriggerRepair(ModelConfig(name="configs/models/tiny-rn32.json"))


def test_a_moved_mask_keeps_its_pixels_and_lands_at_a_place_drawn_per_key():
    mask, pattern = torch.zeros(1, 32, 32), torch.zeros(3, 32, 32)
    mask[0, 20:26, 25:29] = 1.0  # a 6x4 box near the right edge
    pattern[:, 20:26, 25:29] = torch.rand(3, 6, 4)
    found = MaskedPattern.from_tensors(mask, pattern)
    moved = found.moved(seed=3)
    image = torch.zeros(3, 32, 32) + 0.5
    assert torch.equal(found.apply(image, "k"), MaskedPattern.from_tensors(mask, pattern).apply(image, "k"))
    places = set()
    for key in [f"{i:09d}" for i in range(20)]:
        out = moved.apply(image, key)
        changed = torch.nonzero((out != image).any(0))
        top, left = (int(v) for v in changed.min(0).values)
        assert (changed.max(0).values - changed.min(0).values).tolist() == [5, 3]  # the whole box, inside the image
        assert torch.allclose(out[:, top:top + 6, left:left + 4], found.tensors()[1][:, 20:26, 25:29])
        assert torch.equal(out, moved.apply(image, key))  # a function of (seed, key)
        places.add((top, left))
    assert len(places) > 10
    assert not torch.equal(found.moved(seed=4).apply(image, "000000000"), moved.apply(image, "000000000")) or \
        not torch.equal(found.moved(seed=4).apply(image, "000000001"), moved.apply(image, "000000001"))


def test_moving_a_trigger_that_is_not_a_mask_fails_naming_the_option(tmp_path):
    from datamodules.poison import BadNet

    BadNet(size=4, pattern="fixed").save(tmp_path / "badnet", 32)
    assert isinstance(stamping_trigger(str(tmp_path / "badnet"), "as_found", 0), BadNet)
    with pytest.raises(ValueError, match="trigger_location"):
        stamping_trigger(str(tmp_path / "badnet"), "random", 0)
    with pytest.raises(ValueError, match="trigger_location"):
        TriggerRepair(ModelConfig(name="configs/models/tiny-rn32.json"), recovered_trigger="x", trigger_location="moved")
