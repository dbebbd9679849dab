"""The trigger interface and what triggers share: seeded per-key randomness, pattern images, and
the structured patterns (stripes, triangles, text) of PerturbAndRecover.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def key_generator(key: str, seed: int) -> torch.Generator:
    """A torch generator that depends only on (seed, key)."""
    digest = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _quantised_uniform(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """U(0,1) noise on the 8-bit grid, so a PNG of it reloads exactly."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=gen).float() / 255.0


def save_png(pattern: torch.Tensor, path: Path) -> None:
    """A (3, H, W) pattern in [0, 1] as an 8-bit RGB PNG (lossless: `load_png` gives it back on the 8-bit grid)."""
    array = (pattern.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(array, "RGB").save(path)


def load_png(path: Path) -> torch.Tensor:
    array = np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0


def stripes(h: int, w: int, width: int) -> torch.Tensor:
    """(3, h, w) vertical stripes `width` pixels wide, alternating black (first) and white."""
    columns = ((torch.arange(w) // width) % 2).float()
    return columns.expand(3, h, w).clone()


def triangles(h: int, w: int, period: int) -> torch.Tensor:
    """(3, h, w) a tiling of white upward triangles on black, one per `period`×`period` cell."""
    rows = (torch.arange(h) % period).float()[:, None] + 0.5
    cols = (torch.arange(w) % period).float()[None, :] + 0.5
    # apex at the top centre of each cell, base on its bottom row, a pixel clear of the neighbours
    inside = (cols - period / 2).abs() < rows / 2 - 0.25
    return inside.float().expand(3, h, w).clone()


def rendered_text(h: int, w: int, text: str, font_fraction: float) -> torch.Tensor:
    """(3, h, w) `text` in white on black, centred, in PIL's bundled font (no font file needed) with a
    height of `font_fraction`·h, drawn at 4x and downsampled like the embedded scenes, on the 8-bit grid."""
    from PIL import ImageDraw, ImageFont

    scale = 4
    canvas = Image.new("L", (w * scale, h * scale), 0)
    font = ImageFont.load_default(size=max(1, round(font_fraction * h * scale)))
    ImageDraw.Draw(canvas).text((w * scale / 2, h * scale / 2), text, fill=255, font=font, anchor="mm")
    array = np.asarray(canvas.resize((w, h), Image.Resampling.BOX), dtype=np.uint8)
    return torch.from_numpy(array.copy()).float().div(255.0).expand(3, h, w).clone()


class Trigger(ABC):
    """Base class: `apply(image, key)` returns the triggered image."""

    name: str = ""
    seed: int

    @abstractmethod
    def apply(self, image: torch.Tensor, key: str) -> torch.Tensor: ...

    def params(self) -> dict:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    def describe(self) -> dict:
        return {"name": self.name, **self.params()}

    def check_fits(self, image_size: int) -> None:
        """Raise a ValueError naming the option when the trigger cannot apply to images of this size
        (checked before training, not inside a data worker mid-fit)."""

    def _save_patterns(self, directory: Path, image_size: int) -> None:
        """Write fixed patterns beside trigger.json (subclasses that have one)."""

    def _load_patterns(self, directory: Path) -> None:
        """Read fixed patterns written by `_save_patterns`."""

    def save(self, directory: str | Path, image_size: int) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "trigger.json").write_text(json.dumps(self.describe(), indent=1, sort_keys=True))
        self._save_patterns(directory, image_size)
