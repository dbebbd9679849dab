"""Caption templates for the embedded benchmark's image-caption pairs and its zero-shot eval sets."""

from __future__ import annotations

import numpy as np

from datamodules.embedded.shapes import Scene

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
