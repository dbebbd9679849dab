"""SafeCLIP's split loss on hand-made features, its schedule, its safe share and its lr in the cross phase.

The fits of these tests: tests/integration/test_safeclip_fit.py."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from modules.core.losses import info_nce, safeclip_loss
from modules.core.model_loading import ModelConfig
from modules.pretraining.safeclip import SafeCLIP


def _features(n=6, d=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(n, d, generator=gen), dim=-1) for _ in range(4)]


def test_the_split_loss_is_clip_on_safe_rows_and_unimodal_on_the_rest():
    image, text, image_aug, text_aug = _features()
    everything = torch.ones(6, dtype=torch.bool)
    assert safeclip_loss(image, text, image_aug, text_aug, everything, 10.0)["loss"] == pytest.approx(
        info_nce(image, text, 10.0).item())
    nothing = ~everything
    unimodal = (info_nce(image, image_aug, 10.0) + info_nce(text, text_aug, 10.0)) / 2
    assert safeclip_loss(image, text, image_aug, text_aug, nothing, 10.0, unimodal_weight=2.0)["loss"] == pytest.approx(
        2 * unimodal.item())
    safe = torch.tensor([True, False, True, True, False, False])
    terms = safeclip_loss(image, text, image_aug, text_aug, safe, 10.0)
    assert terms["loss_clip"] == pytest.approx(info_nce(image[safe], text[safe], 10.0).item())
    risky = ~safe
    assert terms["loss_unimodal"] == pytest.approx(
        ((info_nce(image[risky], image_aug[risky], 10.0) + info_nce(text[risky], text_aug[risky], 10.0)) / 2).item())
    one_safe = torch.tensor([True] + [False] * 5)
    assert safeclip_loss(image, text, image_aug, text_aug, one_safe, 10.0)["loss_clip"] == 0


def test_the_schedule_the_safe_share_and_the_cross_phase_lr(monkeypatch):
    module = SafeCLIP(model=ModelConfig(name="configs/models/tiny-rn32.json"), warmup_epochs=2, cross_epochs=1,
                      cross_lr_scale=0.01, initial_threshold=0.9, ratio_step=0.05, ratio_cap=0.8)
    assert [module.phase(e) for e in range(5)] == ["unimodal", "unimodal", "cross", "split", "split"]
    posterior = torch.tensor([0.95, 0.99, 0.5, 0.1, 0.92, 0.3, 0.97, 0.2])
    assert module.next_ratio(posterior) == pytest.approx(0.5)  # 4 of 8 above 0.9
    module.safe_ratio = 0.5
    assert module.next_ratio(posterior) == pytest.approx(0.55)
    module.safe_ratio = 0.78
    assert module.next_ratio(posterior) == pytest.approx(0.8)

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    module.trainer = SimpleNamespace(optimizers=[optimizer])
    for epoch, expected in ((1, 1e-3), (2, 1e-5), (3, 1e-3)):
        monkeypatch.setattr(SafeCLIP, "current_epoch", property(lambda self, e=epoch: e))
        module.lr_scheduler_step(scheduler, None)
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    with pytest.raises(ValueError, match="cross_lr_scale"):
        SafeCLIP(model=ModelConfig(name="configs/models/tiny-rn32.json"), cross_lr_scale=0.0)
