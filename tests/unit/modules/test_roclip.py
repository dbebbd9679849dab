"""RoCLIP's memory bank on hand-made embeddings (nearest caption, FIFO, never the query's own caption
before it is added), `cross_aug` training on the augmented views, and (slow) the swap on every
break_epoch-th epoch only, counted from 1 as RoCLIP does.

The fits of these tests: tests/integration/test_roclip_fit.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modules.core.model_loading import ModelConfig
from modules.pretraining.roclip import RoCLIP, TextMemoryBank


def test_the_bank_returns_each_images_nearest_caption_and_forgets_the_oldest():
    bank = TextMemoryBank(size=3)
    captions = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), dim=-1)
    bank.add(captions[:2])
    bank.add(captions[2:])
    images = F.normalize(torch.tensor([[0.9, 0.1], [0.1, 0.9], [-0.8, 0.3]]), dim=-1)
    assert torch.equal(bank.nearest(images), captions)
    bank.add(F.normalize(torch.tensor([[0.0, -1.0]]), dim=-1))  # the oldest, [1, 0], leaves
    assert len(bank) == 3 and not any(torch.equal(row, captions[0]) for row in bank.embeddings)


def test_the_bank_keeps_each_entrys_poisoned_flag_in_step_with_its_embedding():
    bank = TextMemoryBank(size=3)
    captions = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]), dim=-1)
    bank.add(captions[:2], torch.tensor([True, False]))
    bank.add(captions[2:])  # no flags: clean
    assert bank.flags.tolist() == [False, False, False]  # [1, 0] (poisoned) left first
    bank.add(captions[:1], torch.tensor([True]))
    index = bank.nearest_index(F.normalize(torch.tensor([[0.9, 0.1], [-0.9, 0.1]]), dim=-1))
    assert bank.flags[index].tolist() == [True, False]


def test_an_image_never_meets_its_own_caption_through_the_bank():
    bank = TextMemoryBank(size=10)
    bank.add(F.normalize(torch.tensor([[0.0, 1.0]]), dim=-1))
    own = F.normalize(torch.tensor([[1.0, 0.0]]), dim=-1)  # this batch's caption, identical to its image
    assert not torch.equal(bank.nearest(own), own)  # queried before the batch's captions are added
    bank.add(own)
    assert torch.equal(bank.nearest(own), own)


def test_the_bank_holds_no_gradient():
    bank = TextMemoryBank(size=4)
    text = torch.randn(2, 3, requires_grad=True)
    bank.add(text * 2)
    assert not bank.embeddings.requires_grad


@pytest.mark.parametrize("cross_aug", [False, True])
def test_cross_aug_trains_and_fills_the_bank_with_the_augmented_views_only(cross_aug):
    module = RoCLIP(model=ModelConfig(name="configs/models/tiny-rn32.json"), bank_size=8, cross_aug=cross_aug)
    assert module.needs_augmented_views == cross_aug  # the data module builds the views only when asked
    seen = {}
    module.encode_image = lambda x: seen.setdefault("image", x)
    module.encode_text = lambda t: seen.setdefault("text", t)
    module.logit_scale = lambda: torch.tensor(10.0)
    views = {name: F.normalize(torch.randn(4, 6), dim=-1) for name in ("image", "image_aug", "text", "text_aug")}
    module.training_step(views, 0)
    used = ("image_aug", "text_aug") if cross_aug else ("image", "text")
    assert seen["image"] is views[used[0]] and seen["text"] is views[used[1]]
    assert torch.equal(module.bank.embeddings, views[used[1]])  # the bank holds the captions trained on
