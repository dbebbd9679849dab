"""Backdoor triggers. One object both poisons training images and triggers eval images for ASR.

A trigger acts on a float image tensor (3, H, W) in [0, 1] at the model's input resolution, after
resizing and before normalisation. Any randomness (per-image noise, random patch location) is drawn
from a generator seeded by (trigger seed, sample key), so the same key always gets the same trigger
in training, evaluation and outside tools.

`trigger.save(directory, image_size)` writes `trigger.json` (class and parameters) and any fixed
pattern (`pattern.png`, `warp_grid.safetensors`); `load_trigger(directory)` restores it.
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file


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


class MultiTrigger(Trigger):
    """Several triggers in one attack (Huang et al.'s multi-trigger configs): each poisoned key gets one
    of `triggers`, chosen by (seed, key), and its caption names that trigger's target: `targets` gives
    one target per trigger (each to its own target), or None for all to the poison target. ASR is
    measured per trigger, toward its own target, on every eval image (`parts`); `apply` is the poisoning
    of one key. Saved as `trigger.json` plus each trigger's own directory `0/`, `1/`, …"""

    name = "multi"

    def __init__(self, triggers: list[Trigger], targets: Optional[list[str]] = None, seed: int = 0):
        """
        Args:
            triggers: The triggers, at least two.
            targets: One target class per trigger; None: every trigger to `data.poison.target`.
            seed: Seed of which trigger each poisoned key gets.
        """
        if len(triggers) < 2:
            raise ValueError(f"MultiTrigger triggers: give at least two, got {len(triggers)}")
        if any(isinstance(t, MultiTrigger) for t in triggers):
            raise ValueError("MultiTrigger triggers: a MultiTrigger cannot contain another")
        if targets is not None and len(targets) != len(triggers):
            raise ValueError(f"MultiTrigger targets: {len(targets)} targets for {len(triggers)} triggers; give one each")
        self.triggers = list(triggers)
        self.targets = list(targets) if targets is not None else None
        self.seed = seed

    def index(self, key: str) -> int:
        """Which trigger poisons `key`."""
        digest = hashlib.sha256(f"multi/{self.seed}/{key}".encode()).digest()
        return int.from_bytes(digest[:8], "little") % len(self.triggers)

    def target_of(self, index: int, default: str) -> str:
        return self.targets[index] if self.targets is not None else default

    def part_names(self) -> list[str]:
        """`0_badnet`, `1_blended`, …: the labels of per-trigger ASR."""
        return [f"{i}_{t.name}" for i, t in enumerate(self.triggers)]

    def parts(self, default_target: str) -> list[tuple[str, Trigger, str]]:
        """(name, trigger, target) per trigger."""
        return [(name, t, self.target_of(i, default_target))
                for i, (name, t) in enumerate(zip(self.part_names(), self.triggers))]

    def apply(self, image: torch.Tensor, key: str) -> torch.Tensor:
        return self.triggers[self.index(key)].apply(image, key)

    def check_fits(self, image_size: int) -> None:
        for trigger in self.triggers:
            trigger.check_fits(image_size)

    def describe(self) -> dict:
        return {"name": self.name, "seed": self.seed, "targets": self.targets,
                "triggers": [t.describe() for t in self.triggers]}

    def _save_patterns(self, directory: Path, image_size: int) -> None:
        for i, trigger in enumerate(self.triggers):
            trigger.save(directory / str(i), image_size)


TRIGGERS: dict[str, type[Trigger]] = {
    cls.name: cls for cls in (BadNet, Blended, BlendedPattern, SIG, WaNet, OptimizedPatch, MaskedPattern)
}


def load_trigger(directory: str | Path) -> Trigger:
    """Rebuild a trigger from the `trigger.json` (and pattern files) written by `Trigger.save`."""
    directory = Path(directory)
    path = directory / "trigger.json"
    if not path.exists():
        raise ValueError(f"no trigger artifacts at {directory}: {path} is missing")
    spec = json.loads(path.read_text())
    name = spec.pop("name", None)
    if name == MultiTrigger.name:
        parts = [load_trigger(directory / str(i)) for i in range(len(spec["triggers"]))]
        return MultiTrigger(parts, spec.get("targets"), spec.get("seed", 0))
    if name not in TRIGGERS:
        raise ValueError(f"{path}: unknown trigger {name!r}; known: {sorted(TRIGGERS) + [MultiTrigger.name]}")
    if "position" in spec and spec["position"] is not None:
        spec["position"] = tuple(spec["position"])
    trigger = TRIGGERS[name](**spec)
    trigger._load_patterns(directory)
    return trigger
