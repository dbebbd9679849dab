"""BadCLIP: the optimised-patch trigger reloads bit-exact and pastes at the centre; the objective's
triplet negative is the clean image's embedding; (slow) the shipped objective moves patched images
toward the target's caption and images more than random patches do.

The fits of these tests: tests/integration/test_badclip_fit.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.badclip import _patch_file

from datamodules.poison import load_trigger
from datamodules.poison.patch_triggers import OptimizedPatch
from modules.attacks.badclip import BadCLIPWeights, badclip_terms


def test_the_patch_trigger_saves_and_reloads_bit_exact_and_pastes_at_the_centre(tmp_path):
    trigger = OptimizedPatch(str(_patch_file(tmp_path)))
    image = torch.rand(3, 12, 12)
    out = trigger.apply(image, "k")
    assert torch.equal(out[:, 4:8, 4:8], trigger.pixels()) and torch.equal(out[:, :4], image[:, :4])
    trigger.save(tmp_path / "trigger", 12)
    (tmp_path / "patch.png").unlink()  # the run's own copy is what a defense reads
    again = load_trigger(tmp_path / "trigger")
    assert isinstance(again, OptimizedPatch) and torch.equal(again.pixels(), trigger.pixels())
    assert torch.equal(again.apply(image, "k"), out)
    assert (again.pixels() * 255 - (again.pixels() * 255).round()).abs().max() < 1e-4  # on the 8-bit grid


def test_the_patch_trigger_refuses_a_missing_file_or_a_patch_larger_than_the_input(tmp_path):
    with pytest.raises(ValueError, match="trigger.init_args.patch"):
        OptimizedPatch(str(tmp_path / "none.png")).pixels()
    with pytest.raises(ValueError, match="4px patch does not fit"):
        OptimizedPatch(str(_patch_file(tmp_path))).check_fits(3)


def test_the_triplet_term_has_the_clean_image_as_its_negative():
    g = torch.Generator().manual_seed(0)
    patched, clean, positives, captions = (F.normalize(torch.randn(5, 8, generator=g), dim=-1) for _ in range(4))
    terms = badclip_terms(patched, clean, positives, captions, 10.0, BadCLIPWeights(text=0.5, image=2.0))
    assert terms["image"].item() == pytest.approx(F.triplet_margin_loss(patched, positives, clean).item())
    assert terms["loss"].item() == pytest.approx(0.5 * terms["text"].item() + 2.0 * terms["image"].item())
    # pasting in place (the public code's bug) makes the negative the anchor: the term only pulls
    assert badclip_terms(patched, patched, positives, captions, 10.0, BadCLIPWeights())["image"].item() > 1.0
