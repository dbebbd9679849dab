"""Putting one tower back: the right parameters move, and the evaluation agrees with the run's metrics."""

import pytest
import torch

from lightning_app.tower_swap import put_back, tower_swap
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


@pytest.mark.slow
def test_tower_swap_of_a_run_with_itself_gives_the_runs_ca_and_asr(learning_benchmark, small_poisoned_run):
    run_dir, summary = small_poisoned_run
    rows = tower_swap(run_dir, run_dir, learning_benchmark.eval_dir, run_dir / "trigger", "triangle")
    assert [label for label, _, _ in rows][:2] == ["incoming", "defended"]
    for _, ca, asr in rows:
        assert ca == pytest.approx(summary["ca_top1"], abs=1e-5) and asr == pytest.approx(summary["asr"], abs=1e-5)
