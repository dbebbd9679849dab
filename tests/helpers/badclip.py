"""Helpers shared by the unit and integration tests of badclip."""

from __future__ import annotations

import torch

from datamodules.poison.trigger_base import save_png


def _patch_file(tmp_path, size=4, seed=0):
    pixels = torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))
    save_png(pixels, tmp_path / "patch.png")
    return tmp_path / "patch.png"
