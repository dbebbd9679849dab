"""The embedded benchmark's third tier, `strokes`: thin line figures on textured backgrounds.

    python -m datamodules.embedded.benchmark data/embedded_strokes strokes

Built so that no recipe could have been chosen on it: its image statistics differ from both other tiers
(the easy tier's filled shapes on flat, gradient or noisy backgrounds; the hard tier's composed
colour-shape scenes). Here each image is one of 10 figures drawn as strokes 1-2.5 pixels wide, rotated
at random, in one of 8 muted colours the other tiers do not use, over one of 4 textures (wood grain,
woven canvas, speckle, marble); a figure is mostly background, so the evidence for its class is a few
pixels of edge, as in a line drawing or a photo of a wire. Captions use the easy tier's templates.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from datamodules.embedded.shapes import SUPERSAMPLE, Scene, _pick_color, _position_name

STROKE_CLASSNAMES = ("spiral", "zigzag", "wave", "arrow", "asterisk", "grid", "dots", "arc", "chevron", "bolt")

STROKE_COLORS = {
    "maroon": (128, 20, 40),
    "olive": (110, 120, 20),
    "navy": (20, 30, 110),
    "teal": (0, 128, 120),
    "ochre": (200, 140, 30),
    "plum": (140, 70, 130),
    "slate": (90, 100, 120),
    "ivory": (250, 245, 220),
}

TEXTURES = ("wood", "canvas", "speckled", "marble")
STROKE_SIZES = {"small": (0.30, 0.40), "medium": (0.40, 0.52), "large": (0.52, 0.66)}
"""The figure's half-extent, as a fraction of the image's half-side."""
STROKE_WIDTH = (1.0, 2.5)
"""The stroke's width range, in output pixels (at most a fifth of the figure's half-extent)."""


def _texture(rng: np.random.Generator, kind: str, px: int) -> np.ndarray:
    """A muted textured background, float RGB of shape (px, px, 3)."""
    base = rng.integers(90, 200, size=3).astype(np.float32)
    y, x = np.mgrid[0:px, 0:px].astype(np.float32) / px
    if kind == "wood":  # grain: a sinusoid along one axis, warped by a slow wave
        angle = rng.uniform(0, math.pi)
        u = x * math.cos(angle) + y * math.sin(angle)
        v = -x * math.sin(angle) + y * math.cos(angle)
        grain = np.sin(2 * math.pi * (rng.uniform(6, 12) * u + 0.6 * np.sin(2 * math.pi * 1.5 * v)))
        value = 22.0 * grain
    elif kind == "canvas":  # a fine weave: two crossing gratings
        period = SUPERSAMPLE * rng.uniform(1.5, 2.5)
        value = 14.0 * (np.sin(2 * math.pi * x * px / period) + np.sin(2 * math.pi * y * px / period))
    elif kind == "speckled":  # high-frequency speckle at the output resolution
        cells = rng.normal(0.0, 24.0, size=(px // SUPERSAMPLE, px // SUPERSAMPLE))
        value = cells.repeat(SUPERSAMPLE, 0).repeat(SUPERSAMPLE, 1)
    else:  # marble: smooth low-frequency noise
        coarse = rng.normal(0.0, 30.0, size=(5, 5))
        value = np.asarray(Image.fromarray(coarse.astype(np.float32), "F").resize((px, px), Image.Resampling.BICUBIC))
    tint = rng.uniform(0.6, 1.0, size=3).astype(np.float32)
    return base + value[..., None] * tint


def _rotate(points: list[tuple[float, float]], cx: float, cy: float, angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + (x - cx) * c - (y - cy) * s, cy + (x - cx) * s + (y - cy) * c) for x, y in points]


def _figure(shape: str, cx: float, cy: float, r: float, rng: np.random.Generator) -> list[list[tuple[float, float]]]:
    """The polylines of `shape`, centred at (cx, cy) within radius r, before rotation (dots: single points)."""
    if shape == "spiral":
        t = np.linspace(0, 2.5 * 2 * math.pi, 100)
        return [[(cx + r * ti / t[-1] * math.cos(ti), cy + r * ti / t[-1] * math.sin(ti)) for ti in t]]
    if shape == "zigzag":
        xs = np.linspace(cx - r, cx + r, 7)
        return [[(x, cy + (r * 0.5 if i % 2 else -r * 0.5)) for i, x in enumerate(xs)]]
    if shape == "wave":
        xs = np.linspace(cx - r, cx + r, 60)
        return [[(x, cy + r * 0.45 * math.sin((x - cx) / r * 2 * math.pi)) for x in xs]]
    if shape == "arrow":
        return [[(cx - r, cy), (cx + r, cy)], [(cx + r * 0.4, cy - r * 0.5), (cx + r, cy), (cx + r * 0.4, cy + r * 0.5)]]
    if shape == "asterisk":
        return [[(cx + r * math.cos(a), cy + r * math.sin(a)), (cx - r * math.cos(a), cy - r * math.sin(a))]
                for a in (0.0, math.pi / 3, 2 * math.pi / 3)]
    if shape == "grid":
        lines = []
        for f in (-1 / 3, 1 / 3):
            lines.append([(cx + f * 2 * r, cy - r), (cx + f * 2 * r, cy + r)])
            lines.append([(cx - r, cy + f * 2 * r), (cx + r, cy + f * 2 * r)])
        return lines
    if shape == "dots":
        return [[(cx + r * i / 1.5, cy + r * j / 1.5)] for i in (-1, 0, 1) for j in (-1, 0, 1)]
    if shape == "arc":
        t = np.linspace(math.pi, 2 * math.pi, 50)
        return [[(cx + r * math.cos(ti), cy + r * 0.5 + r * math.sin(ti)) for ti in t]]
    if shape == "chevron":
        return [[(cx - r, cy - r * 0.2 + d), (cx, cy - r * 0.7 + d), (cx + r, cy - r * 0.2 + d)] for d in (0.0, r * 0.8)]
    if shape == "bolt":
        return [[(cx + r * 0.3, cy - r), (cx - r * 0.35, cy + r * 0.05), (cx + r * 0.35, cy - r * 0.05),
                 (cx - r * 0.3, cy + r)]]
    raise ValueError(f"unknown stroke figure {shape!r}; expected one of {STROKE_CLASSNAMES}")


def _stroke(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, width: int,
            ink: tuple[int, int, int], rng: np.random.Generator) -> None:
    angle = rng.uniform(0, 2 * math.pi)
    for line in _figure(shape, cx, cy, r, rng):
        line = _rotate(line, cx, cy, angle)
        if len(line) == 1:
            (x, y), d = line[0], width * 1.2
            draw.ellipse((x - d, y - d, x + d, y + d), fill=ink)
        else:
            draw.line(line, fill=ink, width=width, joint="curve")


def draw_stroke_scene(rng: np.random.Generator, shape: str, image_size: int = 32) -> tuple[Image.Image, Scene]:
    """`shape` in strokes over a texture, with random colour, size, width, rotation and position."""
    px = image_size * SUPERSAMPLE
    texture = TEXTURES[int(rng.integers(len(TEXTURES)))]
    canvas = np.clip(_texture(rng, texture, px), 0, 255).astype(np.uint8)
    color = _pick_color(rng, canvas, STROKE_COLORS, min_distance=120)
    size = list(STROKE_SIZES)[int(rng.integers(len(STROKE_SIZES)))]
    r = rng.uniform(*STROKE_SIZES[size]) * px / 2
    cx, cy = rng.uniform(r, px - r), rng.uniform(r, px - r)
    width = int(round(min(rng.uniform(*STROKE_WIDTH) * SUPERSAMPLE, r / 5)))  # a small figure stays open
    ink = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in STROKE_COLORS[color])
    img = Image.fromarray(canvas, "RGB")
    _stroke(ImageDraw.Draw(img), shape, cx, cy, r, width, ink, rng)
    img = img.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return img, Scene(shape, color, size, texture, _position_name(cx, cy, px))


def draw_stroke_sketch(rng: np.random.Generator, shape: str, image_size: int = 32) -> Image.Image:
    """The tier's domain shift: `shape` in pencil grey on plain paper, no texture, no colour."""
    px = image_size * SUPERSAMPLE
    paper = rng.integers(225, 256, size=3).astype(np.float32)
    canvas = np.clip(paper + rng.normal(0.0, 6.0, size=(px, px, 1)), 0, 255).astype(np.uint8)
    size = list(STROKE_SIZES)[int(rng.integers(len(STROKE_SIZES)))]
    r = rng.uniform(*STROKE_SIZES[size]) * px / 2
    cx, cy = rng.uniform(r, px - r), rng.uniform(r, px - r)
    grey = int(rng.integers(20, 90))
    img = Image.fromarray(canvas, "RGB")
    _stroke(ImageDraw.Draw(img), shape, cx, cy, r, int(1.5 * SUPERSAMPLE), (grey, grey, grey), rng)
    return img.resize((image_size, image_size), Image.Resampling.LANCZOS)
