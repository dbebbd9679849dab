"""Triggers over the whole image: Blended (noise or a structured pattern), SIG's sinusoid, WaNet's warp.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from datamodules.poison.trigger_base import (
    Trigger,
    _quantised_uniform,
    key_generator,
    load_png,
    rendered_text,
    save_png,
    stripes,
    triangles,
)


class Blended(Trigger):
    """(1 - alpha)·image + alpha·noise (Chen et al.); CleanCLIP uses alpha 0.2 with U(0, 1) noise.

    `pattern="fixed"` blends one noise image drawn from `seed` (saved as `pattern.png` at the model's
    resolution); `pattern="noise"` re-draws the noise per image.
    """

    name = "blended"

    def __init__(self, alpha: float = 0.2, pattern: Literal["noise", "fixed"] = "fixed", seed: int = 0):
        """
        Args:
            alpha: Weight of the noise image.
            pattern: "fixed" (one noise image for all) or "noise" (re-drawn per image).
            seed: Seed of the fixed pattern and of per-image noise.
        """
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"Blended alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.pattern = pattern
        self.seed = seed
        self._fixed: dict[tuple[int, int], torch.Tensor] = {}

    def fixed_pattern(self, h: int, w: int) -> torch.Tensor:
        if (h, w) not in self._fixed:
            self._fixed[(h, w)] = _quantised_uniform((3, h, w), self.seed)
        return self._fixed[(h, w)]

    def apply(self, image: torch.Tensor, key: str) -> torch.Tensor:
        _, h, w = image.shape
        if self.pattern == "fixed":
            noise = self.fixed_pattern(h, w)
        else:
            noise = torch.rand((3, h, w), generator=key_generator(key, self.seed))
        return (1 - self.alpha) * image + self.alpha * noise.to(image.dtype)

    def _save_patterns(self, directory: Path, image_size: int) -> None:
        if self.pattern == "fixed":
            save_png(self.fixed_pattern(image_size, image_size), directory / "pattern.png")

    def _load_patterns(self, directory: Path) -> None:
        if self.pattern == "fixed":
            pattern = load_png(directory / "pattern.png")
            self._fixed = {tuple(pattern.shape[1:]): pattern}


class BlendedPattern(Trigger):
    """(1 - alpha)·image + alpha·pattern, with a structured pattern over the whole image: PerturbAndRecover's
    Blended-Stripes (`kind: stripes`, alpha 0.03), Blended-Triangles (`kind: triangles`, alpha 0.15) and
    Blended-Text (`kind: text`, a word rendered in white on black). The pattern is drawn at the model's
    resolution and saved as `pattern.png`, so a run's trigger reloads bit-exact even if Pillow's bundled
    font changes. On the embedded benchmark "stripes" and "triangle" are also class names: these
    triggers resemble a class there, which the attack tables should be read with."""

    name = "blended_pattern"

    def __init__(
        self,
        kind: Literal["stripes", "triangles", "text"] = "stripes",
        alpha: float = 0.03,
        period: int = 4,
        text: str = "cf",
        font_fraction: float = 0.5,
        seed: int = 0,
    ):
        """
        Args:
            kind: "stripes" (vertical, `period`/2 pixels wide), "triangles" (one per `period`-pixel cell) or
                "text" (`text`, centred).
            alpha: Weight of the pattern.
            period: Pixels per repetition of stripes (a black and a white stripe) or triangles, at the model's
                resolution.
            text: The word drawn for `kind: text`.
            font_fraction: Text height as a fraction of the image height, for `kind: text`.
            seed: Unused by the patterns; kept so every trigger records one.
        """
        if kind not in ("stripes", "triangles", "text"):
            raise ValueError(f"BlendedPattern kind must be 'stripes', 'triangles' or 'text', got {kind!r}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"BlendedPattern alpha must be in (0, 1], got {alpha}")
        if period < 2:
            raise ValueError(f"BlendedPattern period must be ≥ 2 pixels, got {period}")
        if kind == "text" and not text.strip():
            raise ValueError("BlendedPattern text must not be empty for kind 'text'")
        if not 0.0 < font_fraction <= 1.0:
            raise ValueError(f"BlendedPattern font_fraction must be in (0, 1], got {font_fraction}")
        self.kind = kind
        self.alpha = alpha
        self.period = period
        self.text = text
        self.font_fraction = font_fraction
        self.seed = seed
        self._patterns: dict[tuple[int, int], torch.Tensor] = {}

    def pattern(self, h: int, w: int) -> torch.Tensor:
        if (h, w) not in self._patterns:
            if self.kind == "stripes":
                drawn = stripes(h, w, max(1, self.period // 2))
            elif self.kind == "triangles":
                drawn = triangles(h, w, self.period)
            else:
                drawn = rendered_text(h, w, self.text, self.font_fraction)
            self._patterns[(h, w)] = drawn
        return self._patterns[(h, w)]

    def apply(self, image: torch.Tensor, key: str) -> torch.Tensor:
        _, h, w = image.shape
        return (1 - self.alpha) * image + self.alpha * self.pattern(h, w).to(image.dtype)

    def _save_patterns(self, directory: Path, image_size: int) -> None:
        save_png(self.pattern(image_size, image_size), directory / "pattern.png")

    def _load_patterns(self, directory: Path) -> None:
        pattern = load_png(directory / "pattern.png")
        self._patterns = {tuple(pattern.shape[1:]): pattern}


class SIG(Trigger):
    """Horizontal sinusoidal signal: image + delta·sin(2π·j·frequency / W) (Barni et al.)."""

    name = "sig"

    def __init__(self, delta: float = 60 / 255, frequency: float = 6.0, seed: int = 0):
        """
        Args:
            delta: Amplitude of the signal, on the [0, 1] pixel scale.
            frequency: Number of periods across the image width.
            seed: Unused by the signal; kept so every trigger records one.
        """
        self.delta = delta
        self.frequency = frequency
        self.seed = seed

    def apply(self, image: torch.Tensor, key: str) -> torch.Tensor:
        w = image.shape[-1]
        j = torch.arange(w, dtype=image.dtype)
        signal = self.delta * torch.sin(2 * math.pi * j * self.frequency / w)
        return (image + signal).clamp(0, 1)


class WaNet(Trigger):
    """A fixed smooth warp of the image (Nguyen & Tran): a k×k random control grid, upsampled.

    The warp field is drawn from `seed` and saved as `warp_grid.safetensors`.
    """

    name = "wanet"

    def __init__(self, k: int = 4, strength: float = 0.5, seed: int = 0):
        """
        Args:
            k: Side of the random control grid.
            strength: Warp strength `s`; displacement is s/H of the normalised image extent.
            seed: Seed of the control grid.
        """
        if k < 2:
            raise ValueError(f"WaNet k must be ≥ 2, got {k}")
        self.k = k
        self.strength = strength
        self.seed = seed
        self._noise_grid: Optional[torch.Tensor] = None
        self._grids: dict[tuple[int, int], torch.Tensor] = {}

    def noise_grid(self) -> torch.Tensor:
        if self._noise_grid is None:
            gen = torch.Generator().manual_seed(self.seed)
            ins = torch.rand((1, 2, self.k, self.k), generator=gen) * 2 - 1
            self._noise_grid = ins / ins.abs().mean()
        return self._noise_grid

    def grid(self, h: int, w: int) -> torch.Tensor:
        if (h, w) not in self._grids:
            noise = F.interpolate(self.noise_grid(), size=(h, w), mode="bicubic", align_corners=True)
            noise = noise.permute(0, 2, 3, 1)
            ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
            identity = torch.stack((xs, ys), dim=-1)[None]
            self._grids[(h, w)] = (identity + self.strength * noise / h).clamp(-1, 1)
        return self._grids[(h, w)]

    def apply(self, image: torch.Tensor, key: str) -> torch.Tensor:
        _, h, w = image.shape
        grid = self.grid(h, w).to(image.dtype)
        return F.grid_sample(image[None], grid, align_corners=True)[0].clamp(0, 1)

    def _save_patterns(self, directory: Path, image_size: int) -> None:
        save_file({"noise_grid": self.noise_grid().contiguous()}, str(directory / "warp_grid.safetensors"))

    def _load_patterns(self, directory: Path) -> None:
        self._noise_grid = load_file(str(directory / "warp_grid.safetensors"))["noise_grid"]
        self._grids = {}
