"""Linear probe: logistic regression on a model's frozen image features, clip_benchmark's protocol.

CLIP's paper fits an L2-regularised logistic regression and picks its strength on a validation split;
clip_benchmark's `linear_probe` does the same with a linear layer trained by AdamW (cosine schedule) and
searches the weight decay over 97 log-spaced values from 1e-6 to 1e2: 7 of them first, then around the
best with a halving step (8, 4, 2, 1), and trains the final probe on train + validation. Written here
from that description (the toolkit keeps its own features in memory and reads its own sets).

    features, labels = image_features(encode_image, dataset)
    result = linear_probe(train_x, train_y, test_x, test_y)   # {"top1", "weight_decay", ...}

A CLI run adds it with `--linear_probe` (`lightning_app.linear_probe`), which also probes a finished run.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import torch

from datamodules.eval_config import EvalSetConfig
from datamodules.zeroshot import SKIPPED

WEIGHT_DECAYS = np.logspace(-6, 2, num=97).tolist()
"""The search grid (clip_benchmark's)."""
FIRST_LOOK = [WEIGHT_DECAYS.index(wd) for wd in np.logspace(-6, 2, num=7).tolist()]


@dataclass
class LinearProbeConfig:
    """A linear probe of the run's image features at the end of fit (clip_benchmark's protocol)."""

    train: EvalSetConfig = field(default_factory=lambda: EvalSetConfig(directory="data/embedded/probe", split="train"))
    """The labelled set the probe is fit on (a clip_benchmark classification set and its train split)."""
    test: EvalSetConfig = field(default_factory=lambda: EvalSetConfig(directory="data/embedded/eval"))
    """The labelled set the probe is scored on, in the same classes."""
    val_fraction: float = 0.2
    """Share of the train set held out to choose the weight decay (then trained on too)."""
    epochs: int = 10
    """Epochs of each fit (clip_benchmark's default)."""
    lr: float = 0.1
    """AdamW learning rate (clip_benchmark's default)."""
    batch_size: int = 256
    """Feature batch size of the fits."""
    seed: int = 0
    """Seed of the validation split and of the fits."""

    def __post_init__(self) -> None:
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"linear_probe.val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.epochs < 1 or self.lr <= 0 or self.batch_size < 1:
            raise ValueError(f"linear_probe: epochs ≥ 1, lr > 0 and batch_size ≥ 1, got {self.epochs}, {self.lr}, "
                             f"{self.batch_size}")


@torch.no_grad()
def image_features(encode_image: Callable[[torch.Tensor], torch.Tensor], dataset, batch_size: int = 256,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised features, labels) of a classification set's readable images, in the set's order."""
    features, labels = [], []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        readable = batch["label"] != SKIPPED
        features.append(torch.nn.functional.normalize(encode_image(batch["image"][readable].to(device)).float(), dim=-1).cpu())
        labels.append(batch["label"][readable])
    return torch.cat(features), torch.cat(labels)


@torch.enable_grad()
def train_probe(x: torch.Tensor, y: torch.Tensor, classes: int, weight_decay: float, config: LinearProbeConfig) -> torch.nn.Linear:
    """A linear layer fit by AdamW with a cosine schedule (no warm-up), as clip_benchmark trains its probe."""
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    probe = torch.nn.Linear(x.shape[1], classes)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=config.lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x) / config.batch_size)
    total = config.epochs * steps_per_epoch
    for step in range(total):
        if step % steps_per_epoch == 0:
            order = torch.randperm(len(x), generator=generator)
        rows = order[(step % steps_per_epoch) * config.batch_size:][: config.batch_size]
        for group in optimizer.param_groups:
            group["lr"] = 0.5 * (1 + math.cos(math.pi * step / total)) * config.lr
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(probe(x[rows]), y[rows]).backward()
        optimizer.step()
    return probe


@torch.no_grad()
def _accuracy(probe: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    return (probe(x).argmax(dim=1) == y).float().mean().item()


def choose_weight_decay(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], classes: int,
                        config: LinearProbeConfig) -> float:
    """The weight decay of the grid with the best validation accuracy: 7 values first, then a narrowing look
    around the best (the first of equals wins, so the search is deterministic)."""
    scores: dict[int, float] = {}

    def best_of(indices: list[int]) -> int:
        for index in indices:
            if index not in scores:
                scores[index] = _accuracy(train_probe(*train, classes, WEIGHT_DECAYS[index], config), *val)
        return max(sorted(set(indices)), key=lambda i: scores[i])

    peak = best_of(FIRST_LOOK)
    span = 8
    while span > 0:
        peak = best_of([max(peak - span, 0), peak, min(peak + span, len(WEIGHT_DECAYS) - 1)])
        span //= 2
    return WEIGHT_DECAYS[peak]


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 config: Optional[LinearProbeConfig] = None, classes: Optional[int] = None) -> dict:
    """Fit on the train features (weight decay chosen on a held-out part), score on the test features."""
    config = config or LinearProbeConfig()
    classes = classes or int(max(train_y.max(), test_y.max())) + 1
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(config.seed))
    held_out = max(1, int(round(config.val_fraction * len(train_x))))
    val, fit = order[:held_out], order[held_out:]
    if len(fit) == 0:
        raise ValueError(f"linear probe: {len(train_x)} training images leave none to fit on after the validation split")
    weight_decay = choose_weight_decay((train_x[fit], train_y[fit]), (train_x[val], train_y[val]), classes, config)
    probe = train_probe(train_x, train_y, classes, weight_decay, config)
    return {"top1": _accuracy(probe, test_x, test_y), "weight_decay": weight_decay,
            "train_images": len(train_x), "test_images": len(test_x)}
