"""Per-sample image and text processing: decode → model geometry → poison → normalise; captions are tokenised per batch.

The trigger acts between geometry and normalisation, on pixels in [0, 1] at the model's input size,
so a patch of `size` pixels is the same patch in training and evaluation whatever the source size.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import AutoAugment, CenterCrop, Compose, InterpolationMode, Normalize, PILToTensor, Resize

from datamodules.poison import Poisoner, Trigger
from datamodules.text_augment import eda


@dataclass
class InputSpec:
    """What the model expects as input: square image size, normalisation, tokenizer."""

    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    tokenizer: Callable[[list[str]], torch.Tensor]


@dataclass(frozen=True)
class ModelNeeds:
    """What a model asks of its data, handed to the datamodule once both exist (`ShardDataModule.connect`;
    the CLI does it): the data never reaches into the trainer for its model."""

    input_spec: InputSpec
    """The image size, normalisation and tokenizer the model takes."""
    augmented_views: bool = False
    """Whether each sample also carries an augmented image and an EDA caption (CleanCLIP's unimodal terms)."""


MAX_IMAGE_PIXELS = 64_000_000
"""Default pixel limit of one image (8000 × 8000). PIL's own decompression-bomb limit (~179M pixels) lets
a 13000² PNG of 164 KB through, which costs seconds and gigabytes per sample to decode."""


def decode_image(payload: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """An RGB image; more than `max_pixels` pixels is an error, raised from the header before decoding."""
    image = Image.open(io.BytesIO(payload))
    width, height = image.size
    if width * height > max_pixels:
        raise ValueError(f"a {width}×{height} image ({width * height} pixels) is over the limit of {max_pixels} "
                         "pixels (data.max_image_pixels)")
    return image.convert("RGB")


class ModelGeometry:
    """Resize the short side and centre-crop to the model's size; uint8 tensor (3, S, S)."""

    def __init__(self, image_size: int):
        self.image_size = image_size
        self.to_tensor = PILToTensor()
        self.transform = Compose([
            Resize(image_size, interpolation=InterpolationMode.BICUBIC),
            CenterCrop(image_size),
            PILToTensor(),
        ])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.size == (self.image_size, self.image_size):
            return self.to_tensor(image)
        return self.transform(image)


def _rng(seed: int, key: str, epoch: int) -> random.Random:
    digest = hashlib.sha256(f"augment/{seed}/{epoch}/{key}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


class TrainSample:
    """Builds a training sample from a decoded pair; optionally the augmented views for SSL terms."""

    def __init__(self, spec: InputSpec, poisoner: Poisoner, augmented_views: bool = False, seed: int = 0,
                 use_synonyms: bool = True):
        self.geometry = ModelGeometry(spec.image_size)
        self.normalize = Normalize(spec.mean, spec.std)
        self.tokenizer = spec.tokenizer
        self.poisoner = poisoner
        self.augmented_views = augmented_views
        self.auto_augment = AutoAugment() if augmented_views else None
        self.seed = seed
        self.use_synonyms = use_synonyms
        self.epoch = 0

    def __call__(self, key: str, image: Image.Image, caption: str) -> dict:
        pixels = self.geometry(image).float() / 255.0
        pixels, caption, poisoned = self.poisoner(key, pixels, caption)
        sample = {
            "image": self.normalize(pixels),
            "text": caption,
            "key": key,
            "poisoned": poisoned,
        }
        if self.augmented_views:
            rng = _rng(self.seed, key, self.epoch)
            uint8 = (pixels * 255).round().to(torch.uint8)
            with torch.random.fork_rng(devices=[]):  # AutoAugment draws from torch's global RNG
                torch.manual_seed(rng.getrandbits(63))
                augmented = self.auto_augment(uint8)
            sample["image_aug"] = self.normalize(augmented.float() / 255.0)
            sample["text_aug"] = eda(caption, rng, use_synonyms=self.use_synonyms)
        return sample


    def collate(self, samples: list[dict]) -> dict:
        """Stack a batch; captions are tokenised here, a batch at a time (half the cost per caption)."""
        batch = collate(samples)
        batch["caption"] = list(batch["text"])
        for name in ("text", "text_aug"):
            if name in batch:
                batch[name] = self.tokenizer(batch[name])
        return batch


def collate(samples: list[dict]) -> dict:
    batch = {}
    for name in samples[0]:
        values = [s[name] for s in samples]
        if isinstance(values[0], torch.Tensor):
            batch[name] = torch.stack(values)
        elif isinstance(values[0], bool):
            batch[name] = torch.tensor(values)
        else:
            batch[name] = values
    return batch


def normalise_pixels(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """Pixels in [0, 1], (..., 3, H, W), to the model's input normalisation (what `Normalize` does in the stream)."""
    mean = torch.as_tensor(mean, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=pixels.dtype, device=pixels.device).view(-1, 1, 1)
    return (pixels - mean) / std


def denormalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """The inverse of `normalise_pixels`: model inputs back to pixels in [0, 1]."""
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(-1, 1, 1)
    return images * std + mean


def apply_trigger(trigger: Trigger, images: torch.Tensor, keys: Sequence[str], mean, std) -> torch.Tensor:
    """`trigger` on normalised model inputs (N, 3, H, W): applied in pixel space per key, normalised again."""
    pixels = denormalise(images, mean, std)
    return normalise_pixels(torch.stack([trigger.apply(p, key) for p, key in zip(pixels, keys)]), mean, std)
