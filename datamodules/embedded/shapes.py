"""Procedural images for the embedded benchmark: coloured shapes and patterns on a background.

Each image is drawn at 4x resolution and downsampled, so edges are anti-aliased at 32x32.
`draw_scene(rng, shape)` (the easy tier: one object) and `draw_composed_scene(rng, color, shape)` (the
hard tier: the object of a colour-shape class among smaller distractors) return the PIL image and the
attributes a caption can mention.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CLASSNAMES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "star",
    "diamond",
    "heart",
    "checkerboard",
    "stripes",
)

COLORS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 30),
    "orange": (250, 140, 20),
    "purple": (150, 50, 200),
    "pink": (250, 130, 190),
    "cyan": (40, 210, 220),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}

BACKGROUNDS = ("dark", "light", "gradient", "noisy")
SIZES = {"small": (0.22, 0.30), "medium": (0.30, 0.38), "large": (0.38, 0.47)}
SUPERSAMPLE = 4


@dataclass(frozen=True)
class Scene:
    shape: str
    color: str
    size: str
    background: str
    position: str
    distractors: tuple[tuple[str, str], ...] = ()
    """(colour, shape) of each smaller object drawn behind the main one (hard tier only)."""


def _background(rng: np.random.Generator, kind: str, px: int) -> np.ndarray:
    if kind == "dark":
        base = rng.integers(0, 70, size=3)
        return np.broadcast_to(base, (px, px, 3)).astype(np.float32)
    if kind == "light":
        base = rng.integers(180, 256, size=3)
        return np.broadcast_to(base, (px, px, 3)).astype(np.float32)
    if kind == "gradient":
        a, b = rng.integers(0, 256, size=(2, 3))
        t = np.linspace(0.0, 1.0, px, dtype=np.float32)
        ramp = t[:, None] if rng.random() < 0.5 else t[None, :]
        ramp = np.broadcast_to(ramp, (px, px))[..., None]
        return a * (1 - ramp) + b * ramp
    base = rng.integers(60, 200, size=3).astype(np.float32)
    noise = rng.normal(0.0, 18.0, size=(px // SUPERSAMPLE, px // SUPERSAMPLE, 3))
    noise = noise.repeat(SUPERSAMPLE, 0).repeat(SUPERSAMPLE, 1)
    return base + noise


def _star(cx: float, cy: float, r: float, points: int = 5) -> list[tuple[float, float]]:
    out = []
    for i in range(points * 2):
        radius = r if i % 2 == 0 else r * 0.42
        angle = -math.pi / 2 + i * math.pi / points
        out.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return out


def _heart(cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    pts = []
    for t in np.linspace(0, 2 * math.pi, 80):
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((cx + r * x / 17.0, cy - r * y / 17.0))
    return pts


def _draw_shape(draw: ImageDraw.ImageDraw, mask: Image.Image, shape: str, cx: float, cy: float, r: float,
                fill: tuple[int, int, int], rng: np.random.Generator) -> None:
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r * 0.95, cy + r * 0.8), (cx - r * 0.95, cy + r * 0.8)], fill=fill)
    elif shape == "cross":
        w = r * 0.33
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(1, int(r * 0.3)))
    elif shape == "star":
        draw.polygon(_star(cx, cy, r), fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r * 0.7, cy), (cx, cy + r), (cx - r * 0.7, cy)], fill=fill)
    elif shape == "heart":
        draw.polygon(_heart(cx, cy, r), fill=fill)
    elif shape in ("checkerboard", "stripes"):
        # Patterns fill a square region; the mask keeps the background between the cells.
        side = 2 * r * 0.9
        x0, y0 = cx - side / 2, cy - side / 2
        mdraw = ImageDraw.Draw(mask)
        if shape == "checkerboard":
            n = 4
            cell = side / n
            for i in range(n):
                for j in range(n):
                    if (i + j) % 2 == 0:
                        mdraw.rectangle((x0 + i * cell, y0 + j * cell, x0 + (i + 1) * cell, y0 + (j + 1) * cell), fill=255)
        else:
            n = 4
            band = side / (2 * n)
            vertical = rng.random() < 0.5
            for i in range(n):
                a = i * 2 * band
                if vertical:
                    mdraw.rectangle((x0 + a, y0, x0 + a + band, y0 + side), fill=255)
                else:
                    mdraw.rectangle((x0, y0 + a, x0 + side, y0 + a + band), fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {CLASSNAMES}")


def _position_name(cx: float, cy: float, px: int) -> str:
    third = px / 3
    row = "top" if cy < third else "bottom" if cy > 2 * third else "middle"
    col = "left" if cx < third else "right" if cx > 2 * third else "center"
    if row == "middle" and col == "center":
        return "center"
    return f"{row} {col}".replace("middle ", "").replace(" center", "")


def _pick_color(rng: np.random.Generator, canvas: np.ndarray, palette: dict | None = None,
                min_distance: float = 150) -> str:
    """A colour of `palette` (default: COLORS) that stands out from the background (RGB distance ≥
    `min_distance` from its mean; the farthest if none does)."""
    palette = COLORS if palette is None else palette
    mean = canvas.reshape(-1, 3).mean(axis=0)
    names = [n for n, rgb in palette.items() if np.linalg.norm(np.array(rgb) - mean) >= min_distance]
    if not names:
        names = [max(palette, key=lambda n: np.linalg.norm(np.array(palette[n]) - mean))]
    return names[int(rng.integers(len(names)))]


def draw_scene(rng: np.random.Generator, shape: str, image_size: int = 32) -> tuple[Image.Image, Scene]:
    """Draw `shape` with random colour, size, position and background."""
    px = image_size * SUPERSAMPLE
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    canvas = np.clip(_background(rng, background, px), 0, 255).astype(np.uint8)
    color = _pick_color(rng, canvas)
    size = list(SIZES)[int(rng.integers(len(SIZES)))]
    lo, hi = SIZES[size]
    r = rng.uniform(lo, hi) * px / 2 * 1.6
    cx = rng.uniform(r, px - r)
    cy = rng.uniform(r, px - r)
    img = Image.fromarray(canvas, "RGB")
    _paint(img, shape, cx, cy, r, _jitter(rng, color), rng)
    img = img.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return img, Scene(shape, color, size, background, _position_name(cx, cy, px))


def _jitter(rng: np.random.Generator, color: str) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-20, 21), 0, 255)) for c in COLORS[color])


def _paint(img: Image.Image, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int],
           rng: np.random.Generator) -> None:
    mask = Image.new("L", img.size, 0)
    _draw_shape(ImageDraw.Draw(img), mask, shape, cx, cy, r, fill, rng)
    if shape in ("checkerboard", "stripes"):
        img.paste(Image.new("RGB", img.size, fill), (0, 0), mask)


COMPOSED_COLORS = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink")
"""The colours of the hard tier's classes (neighbouring hues among them): each class is one of these
with one of the 10 shapes, 80 classes."""
COMPOSED_CLASSNAMES = tuple(f"{color} {shape}" for color in COMPOSED_COLORS for shape in CLASSNAMES)
DISTRACTOR_SIZE = (0.16, 0.26)
"""Distractor radius range, as a fraction of the image (the main object is medium or large)."""
COLOR_CAST = 25.0
"""Hard tier: standard deviation of a per-image RGB offset (lighting), which blurs neighbouring hues."""


def _contrasting_background(rng: np.random.Generator, color: str, px: int) -> tuple[str, np.ndarray]:
    """A background the class colour stands out from (RGB distance ≥ 150 from its mean); the last of
    a few draws if none does, so the tier stays a pure function of the seed."""
    for _ in range(8):
        kind = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        canvas = np.clip(_background(rng, kind, px), 0, 255).astype(np.uint8)
        if np.linalg.norm(np.array(COLORS[color]) - canvas.reshape(-1, 3).mean(axis=0)) >= 150:
            break
    return kind, canvas


def draw_composed_scene(rng: np.random.Generator, color: str, shape: str, image_size: int = 32,
                        max_distractors: int = 3) -> tuple[Image.Image, Scene]:
    """Draw a `color` `shape` (medium or large, on top) and 1..`max_distractors` smaller objects of
    other colour-shape pairs behind it, so that naming the class means binding colour to shape."""
    px = image_size * SUPERSAMPLE
    background, canvas = _contrasting_background(rng, color, px)
    img = Image.fromarray(canvas, "RGB")
    distractors = []
    for _ in range(int(rng.integers(1, max_distractors + 1))):
        other_shape = CLASSNAMES[int(rng.integers(len(CLASSNAMES)))]
        other_color = _pick_color(rng, canvas)
        if (other_color, other_shape) == (color, shape):
            other_shape = CLASSNAMES[(CLASSNAMES.index(shape) + 1) % len(CLASSNAMES)]
        r = rng.uniform(*DISTRACTOR_SIZE) * px / 2 * 1.6
        _paint(img, other_shape, rng.uniform(r, px - r), rng.uniform(r, px - r), r, _jitter(rng, other_color), rng)
        distractors.append((other_color, other_shape))
    size = ("medium", "large")[int(rng.integers(2))]
    r = rng.uniform(*SIZES[size]) * px / 2 * 1.6
    cx, cy = rng.uniform(r, px - r), rng.uniform(r, px - r)
    _paint(img, shape, cx, cy, r, _jitter(rng, color), rng)
    cast = rng.normal(0.0, COLOR_CAST, size=3)
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + cast, 0, 255).astype(np.uint8), "RGB")
    img = img.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return img, Scene(shape, color, size, background, _position_name(cx, cy, px), tuple(distractors))


def draw_sketch(rng: np.random.Generator, shape: str, image_size: int = 32,
                color: str | None = None) -> Image.Image:
    """`shape` as a line drawing on paper: its outline only, in `color` (the hard tier's classes need it)
    or in a dark pencil grey. The embedded benchmark's domain shift, playing ImageNet-Sketch's part: the
    classes of the training images, drawn as no training image is."""
    from PIL import ImageFilter

    px = image_size * SUPERSAMPLE
    paper = rng.integers(225, 256, size=3).astype(np.float32)
    canvas = np.clip(paper + rng.normal(0.0, 6.0, size=(px, px, 1)), 0, 255).astype(np.uint8)
    size = list(SIZES)[int(rng.integers(len(SIZES)))]
    r = rng.uniform(*SIZES[size]) * px / 2 * 1.6
    cx, cy = rng.uniform(r, px - r), rng.uniform(r, px - r)
    silhouette = Image.new("RGB", (px, px), (0, 0, 0))
    _paint(silhouette, shape, cx, cy, r, (255, 255, 255), rng)
    stroke = max(3, int(round(SUPERSAMPLE * 1.5))) | 1  # an odd filter size, about 1.5 output pixels wide
    outline = silhouette.convert("L").filter(ImageFilter.FIND_EDGES).filter(ImageFilter.MaxFilter(stroke))
    ink = _jitter(rng, color) if color is not None else tuple(int(v) for v in rng.integers(20, 90, size=1).repeat(3))
    img = Image.fromarray(canvas, "RGB")
    img.paste(Image.new("RGB", img.size, ink), (0, 0), outline.point(lambda v: 255 if v > 40 else 0))
    return img.resize((image_size, image_size), Image.Resampling.LANCZOS)
