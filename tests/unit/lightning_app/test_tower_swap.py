"""Putting one tower back: the right parameters move, and the evaluation agrees with the run's metrics.

The fits of these tests: tests/integration/test_tower_swap_fit.py."""

import pytest
import torch

from lightning_app.tower_swap import put_back
from modules.core.model_loading import ModelConfig, build_model


def _tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name="configs/models/tiny-vit32.json"))[0]


@pytest.mark.parametrize("image_side", [True, False])
def test_put_back_copies_one_side_and_leaves_the_other(image_side):
    incoming, defended = _tiny(0), _tiny(1)
    before = {k: v.clone() for k, v in defended.state_dict().items()}
    put_back(defended, incoming, image_side)
    source = incoming.state_dict()
    for name, tensor in defended.state_dict().items():
        expected = source[name] if name.startswith("visual.") == image_side else before[name]
        assert torch.equal(tensor, expected), name
    assert not torch.equal(source["token_embedding.weight"], before["token_embedding.weight"])  # the seeds differ
