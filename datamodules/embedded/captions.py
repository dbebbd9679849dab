"""Captions for the embedded benchmark's image-caption pairs, and its zero-shot prompt templates."""

from __future__ import annotations

import numpy as np

from datamodules.embedded.shapes import CLASSNAMES, COMPOSED_COLORS, Scene

CAPTION_TEMPLATES = (
    "a {size} {color} {shape} on a {background} background",
    "a photo of a {color} {shape}",
    "a {shape}",
    "{color} {shape}, {size}",
    "a drawing of a {shape} in {color}",
    "an image showing a {size} {shape}",
    "there is a {color} {shape} in the {position}",
    "a {background} picture with a {color} {shape}",
    "a {shape} in the {position} of the picture",
    "a simple {shape} drawn in {color}",
    "the {shape} is {color} and {size}",
    "close-up of a {color} {shape} on {background}",
)

ZEROSHOT_TEMPLATES = (
    "a photo of a {c}.",
    "a drawing of a {c}.",
    "a {c}.",
    "an image of a {c}.",
    "a small {c}.",
    "a large {c}.",
    "a picture with a {c}.",
)


def caption_for(scene: Scene, rng: np.random.Generator) -> str:
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    return template.format(
        shape=scene.shape,
        color=scene.color,
        size=scene.size,
        background=scene.background,
        position=scene.position,
    )


WRONG_CLASS_RATE = 0.15
"""Hard tier: share of captions that name another colour-shape class than the image's (label noise)."""
NAMES_DISTRACTOR_RATE = 0.3
"""Hard tier: share of captions that also name one of the distractor objects, before or after."""


def composed_caption_for(scene: Scene, rng: np.random.Generator) -> str:
    """A hard-tier caption: mostly the main object's, sometimes a wrong class, sometimes with a
    distractor named beside it, as web captions name several things and some of them wrongly."""
    color, shape = scene.color, scene.shape
    if rng.random() < WRONG_CLASS_RATE:
        color = COMPOSED_COLORS[int(rng.integers(len(COMPOSED_COLORS)))]
        shape = CLASSNAMES[int(rng.integers(len(CLASSNAMES)))]
    caption = caption_for(Scene(shape, color, scene.size, scene.background, scene.position), rng)
    if scene.distractors and rng.random() < NAMES_DISTRACTOR_RATE:
        other_color, other_shape = scene.distractors[int(rng.integers(len(scene.distractors)))]
        other = f"a small {other_color} {other_shape}"
        caption = f"{caption} and {other}" if rng.random() < 0.5 else f"{other} and {caption}"
    return caption


RETRIEVAL_TEMPLATES = (
    "a {size} {color} {shape} on {background}, {position}",
    "{position}: {size} {color} {shape}, {background} background",
    "{background} picture, {color} {shape}, {size}, {position}",
    "a {color} {shape} ({size}) at {position} on {background}",
    "{size} {shape} in {color}, {position}, {background}",
)
"""The retrieval set's captions: five paraphrases naming every attribute, as MSCOCO has five captions per
image, so that no two images of the set share a caption (a shared caption makes image-to-text retrieval
a tie, which recall@k counts against the query). Each is at most 14 tokens, so that the tiny models'
16-token context (with its start and end tokens) cuts none of them and makes none equal to another."""


def retrieval_captions(scene: Scene, count: int) -> list[str]:
    attributes = {"shape": scene.shape, "color": scene.color, "size": scene.size, "background": scene.background,
                  "position": scene.position}
    return [RETRIEVAL_TEMPLATES[i % len(RETRIEVAL_TEMPLATES)].format(**attributes) for i in range(count)]
