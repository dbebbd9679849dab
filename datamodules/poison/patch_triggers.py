"""Triggers pasted on a region of the image: BadNet's patch, BadCLIP's optimised patch, and a recovered
(masked) pattern that a trigger finder hands to a repair.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal, Optional

import torch

from datamodules.poison.trigger_base import Trigger, _quantised_uniform, key_generator, load_png, save_png, stripes


class BadNet(Trigger):
    """A square patch pasted on the image (Gu et al.).

    `pattern="noise"` is CleanCLIP's BadNet: the patch is the image's channel mean plus N(0, 1) noise,
    re-drawn for every image, so the trigger is a noise distribution. `pattern="fixed"` is one U(0, 1)
    noise patch drawn once from `seed` (an easier, structured trigger), saved as `pattern.png`.
    `pattern="stripes"` is PerturbAndRecover's BadNet-Stripes: vertical black and white stripes, each
    `cell` pixels wide, starting with black.
    """

    name = "badnet"

    def __init__(
        self,
        size: int = 16,
        pattern: Literal["noise", "fixed", "stripes"] = "noise",
        location: Literal["random", "fixed"] = "random",
        position: Optional[tuple[int, int]] = None,
        seed: int = 0,
        cell: int = 1,
    ):
        """
        Args:
            size: Side of the patch in pixels at the model's input resolution.
            pattern: "noise" (re-drawn per image, CleanCLIP), "fixed" (one noise pattern for all images) or
                "stripes" (black and white vertical stripes `cell` pixels wide).
            location: "random" (per image, from the sample key) or "fixed" (at `position`).
            position: (row, col) of the patch's top-left corner for a fixed location; default bottom-right.
            seed: Seed of the fixed pattern and of all per-image randomness.
            cell: Side in pixels of the noise blocks (1: per-pixel noise, as in the published attacks), or the
                width of one stripe.
        """
        if size < 1:
            raise ValueError(f"BadNet size must be ≥ 1 pixel, got {size}")
        if not 1 <= cell <= size:
            raise ValueError(f"BadNet cell must be in [1, size={size}], got {cell}")
        if pattern not in ("noise", "fixed", "stripes"):
            raise ValueError(f"BadNet pattern must be 'noise', 'fixed' or 'stripes', got {pattern!r}")
        self.size = size
        self.pattern = pattern
        self.location = location
        self.position = list(position) if position is not None else None
        self.seed = seed
        self.cell = cell
        self._fixed: Optional[torch.Tensor] = None

    def _blocks(self, noise: torch.Tensor) -> torch.Tensor:
        """Nearest-upsample a (3, n, n) coarse noise grid to (3, size, size) blocks of `cell` pixels."""
        return noise.repeat_interleave(self.cell, 1).repeat_interleave(self.cell, 2)[:, : self.size, : self.size]

    def fixed_pattern(self) -> torch.Tensor:
        if self._fixed is None:
            if self.pattern == "stripes":
                self._fixed = stripes(self.size, self.size, self.cell)
            else:
                n = math.ceil(self.size / self.cell)
                self._fixed = self._blocks(_quantised_uniform((3, n, n), self.seed))
        return self._fixed

    def check_fits(self, image_size: int) -> None:
        if self.size > image_size:
            raise ValueError(f"trigger.init_args.size: a BadNet patch of {self.size}px does not fit the model's "
                             f"{image_size}x{image_size} input")
        if self.location == "fixed" and self.position is not None:
            top, left = self.position
            if not (0 <= top <= image_size - self.size and 0 <= left <= image_size - self.size):
                raise ValueError(f"trigger.init_args.position {self.position}: a {self.size}px patch there leaves the "
                                 f"{image_size}x{image_size} input")

    def apply(self, image: torch.Tensor, key: str) -> torch.Tensor:
        _, h, w = image.shape
        if self.size > min(h, w):
            raise ValueError(f"BadNet patch of {self.size}px does not fit a {h}x{w} image")
        gen = key_generator(key, self.seed)
        if self.pattern == "noise":
            mean = image.mean(dim=(1, 2), keepdim=True)
            n = math.ceil(self.size / self.cell)
            patch = (mean + self._blocks(torch.randn((3, n, n), generator=gen))).clamp(0, 1)
        else:
            patch = self.fixed_pattern()
        if self.location == "random":
            top = int(torch.randint(0, h - self.size + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - self.size + 1, (1,), generator=gen))
        elif self.position is not None:
            top, left = self.position
        else:
            top, left = h - self.size, w - self.size
        out = image.clone()
        out[:, top : top + self.size, left : left + self.size] = patch.to(image.dtype)
        return out

    def _save_patterns(self, directory: Path, image_size: int) -> None:
        if self.pattern != "noise":
            save_png(self.fixed_pattern(), directory / "pattern.png")

    def _load_patterns(self, directory: Path) -> None:
        if self.pattern != "noise":
            self._fixed = load_png(directory / "pattern.png")


class OptimizedPatch(Trigger):
    """A fixed patch image pasted on every image: BadCLIP's optimised patch (Liang et al., CVPR 2024;
    `modules.OptimizeBadCLIPPatch` writes it as `RUN/badclip/patch.png`), or any patch given as a
    lossless RGB PNG at the model's resolution. Saved with the run's trigger as `pattern.png` (8-bit,
    lossless), so poisoning, ASR and any later tool use the same pixels bit for bit. BadCLIP pastes
    its patch at the centre; `location: random` draws the place from (seed, key) as BadNet does."""

    name = "patch"

    def __init__(self, patch: str = "", location: Literal["center", "random"] = "center", seed: int = 0):
        """
        Args:
            patch: Path of the patch PNG (e.g. the `badclip/patch.png` of an OptimizeBadCLIPPatch run).
            location: "center" (BadCLIP) or "random" (per image, from the sample key).
            seed: Seed of the random location.
        """
        self.patch = str(patch)
        self.location = location
        self.seed = seed
        self._pixels: Optional[torch.Tensor] = None

    def pixels(self) -> torch.Tensor:
        if self._pixels is None:
            if not self.patch or not Path(self.patch).exists():
                raise ValueError(f"trigger.init_args.patch: patch image {self.patch!r} does not exist (run the "
                                 "patch optimisation stage first, e.g. configs/embedded/badclip_patch.yaml)")
            self._pixels = load_png(Path(self.patch))
        return self._pixels

    def check_fits(self, image_size: int) -> None:
        size = self.pixels().shape[-1]
        if size > image_size:
            raise ValueError(f"trigger.init_args.patch: a {size}px patch does not fit the model's {image_size}px input")

    def apply(self, image: torch.Tensor, key: str) -> torch.Tensor:
        patch = self.pixels()
        _, h, w = image.shape
        ph, pw = patch.shape[-2:]
        if self.location == "random":
            gen = key_generator(key, self.seed)
            top = int(torch.randint(0, h - ph + 1, (1,), generator=gen))
            left = int(torch.randint(0, w - pw + 1, (1,), generator=gen))
        else:
            top, left = (h - ph) // 2, (w - pw) // 2
        out = image.clone()
        out[:, top:top + ph, left:left + pw] = patch.to(image.dtype)
        return out

    def _save_patterns(self, directory: Path, image_size: int) -> None:
        save_png(self.pixels(), directory / "pattern.png")

    def _load_patterns(self, directory: Path) -> None:
        self._pixels = load_png(directory / "pattern.png")


class MaskedPattern(Trigger):
    """(1 - mask)·image + mask·pattern with a per-pixel mask (1, H, W) and pattern (3, H, W) in [0, 1] at
    the model's resolution: a trigger recovered by inversion (`modules.InvertTrigger`, DECREE). Built by
    `from_tensors` or loaded from a `trigger/` directory (`mask.png`, `pattern.png`, 8-bit, lossless).
    `location: random` moves the mask's bounding box, with its pattern, to a place drawn from (seed, key)
    (`moved`): for a trigger the attack may put anywhere, as BadNet's random location does."""

    name = "masked"

    def __init__(self, location: Literal["in_place", "random"] = "in_place", seed: int = 0):
        """
        Args:
            location: "in_place" (where the mask has it) or "random" (per image, from the sample key).
            seed: Seed of the random location.
        """
        if location not in ("in_place", "random"):
            raise ValueError(f"MaskedPattern location must be in_place or random, got {location!r}")
        self.location = location
        self.seed = seed
        self._mask: Optional[torch.Tensor] = None
        self._pattern: Optional[torch.Tensor] = None

    @classmethod
    def from_tensors(cls, mask: torch.Tensor, pattern: torch.Tensor) -> "MaskedPattern":
        """Quantised to the 8-bit grid, so that the saved trigger is the one this object applies."""
        if mask.dim() != 3 or mask.shape[0] != 1 or pattern.shape != (3, *mask.shape[1:]):
            raise ValueError(f"MaskedPattern needs a (1, H, W) mask and a (3, H, W) pattern, got "
                             f"{tuple(mask.shape)} and {tuple(pattern.shape)}")
        trigger = cls()
        trigger._mask = (mask.detach().float().clamp(0, 1) * 255).round() / 255
        trigger._pattern = (pattern.detach().float().clamp(0, 1) * 255).round() / 255
        return trigger

    def moved(self, seed: int) -> "MaskedPattern":
        """The same mask and pattern, their bounding box pasted at a place drawn per image from (seed, key)."""
        trigger = MaskedPattern(location="random", seed=seed)
        trigger._mask, trigger._pattern = self.tensors()
        return trigger

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._mask is None or self._pattern is None:
            raise ValueError("MaskedPattern has no mask: load it from a trigger/ directory (load_trigger) or "
                             "build it with MaskedPattern.from_tensors")
        return self._mask, self._pattern

    def check_fits(self, image_size: int) -> None:
        size = self.tensors()[0].shape[-1]
        if size != image_size:
            raise ValueError(f"a {size}px recovered mask does not fit the model's {image_size}px input")

    def apply(self, image: torch.Tensor, key: str) -> torch.Tensor:
        mask, pattern = self.tensors()
        if mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"MaskedPattern of {tuple(mask.shape[-2:])} applied to an image of {tuple(image.shape[-2:])}")
        if self.location == "random":
            mask, pattern = self._placed(mask, pattern, key)
        return (1 - mask.to(image.dtype)) * image + mask.to(image.dtype) * pattern.to(image.dtype)

    def _placed(self, mask: torch.Tensor, pattern: torch.Tensor, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows, cols = torch.nonzero(mask[0].amax(1) > 0).flatten(), torch.nonzero(mask[0].amax(0) > 0).flatten()
        if len(rows) == 0:
            return mask, pattern
        top0, bottom, left0, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        h, w = mask.shape[-2:]
        gen = key_generator(key, self.seed)
        top = int(torch.randint(0, h - (bottom - top0) + 1, (1,), generator=gen))
        left = int(torch.randint(0, w - (right - left0) + 1, (1,), generator=gen))
        placed_mask, placed_pattern = torch.zeros_like(mask), torch.zeros_like(pattern)
        placed_mask[:, top:top + bottom - top0, left:left + right - left0] = mask[:, top0:bottom, left0:right]
        placed_pattern[:, top:top + bottom - top0, left:left + right - left0] = pattern[:, top0:bottom, left0:right]
        return placed_mask, placed_pattern

    def _save_patterns(self, directory: Path, image_size: int) -> None:
        mask, pattern = self.tensors()
        save_png(mask.expand(3, -1, -1), directory / "mask.png")
        save_png(pattern, directory / "pattern.png")

    def _load_patterns(self, directory: Path) -> None:
        self._mask = load_png(directory / "mask.png")[:1]
        self._pattern = load_png(directory / "pattern.png")
