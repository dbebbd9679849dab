"""RoCLIP's memory bank on hand-made embeddings (nearest caption, FIFO, never the query's own caption
before it is added), `cross_aug` training on the augmented views, and (slow) the swap on every
break_epoch-th epoch only, counted from 1 as RoCLIP does."""

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


@pytest.mark.slow
def test_roclip_swaps_captions_on_every_break_epoch_only(small_benchmark, tmp_path):
    import csv
    import json

    from lightning_app.cli import BackdoorCLI

    run_dir = tmp_path / "run"
    BackdoorCLI(args=["fit", "--config", "configs/embedded/roclip.yaml", "--trainer.default_root_dir", str(run_dir),
                      "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false",
                      "--trainer.log_every_n_steps", "1", "--data.init_args.embedded", "null",
                      "--data.init_args.train_shards", small_benchmark.pretrain_urls,
                      "--data.init_args.eval.directory", small_benchmark.eval_dir, "--data.init_args.batch_size", "32",
                      "--model.init_args.optimizer.warmup_steps", "5", "--model.init_args.bank_size", "256"])
    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("train/swapped")]
    by_epoch = {e: [float(r["train/swapped"]) for r in rows if int(r["epoch"]) == e] for e in (0, 1, 2)}
    # RoCLIP counts epochs from 1 and swaps on its 2nd, 4th, ...: Lightning's epochs 1, 3, ...; the bank
    # filled during the plain first epoch, so the swap epoch's first batch already finds something
    assert not any(by_epoch[0]) and all(by_epoch[1]) and not any(by_epoch[2])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["ca_top1"] is not None
    assert 0.0 <= summary["roclip"]["poisoned_swapped_to_poisoned"] <= 1.0  # epoch 1's, the only swap epoch
