"""Segmentation oracles for the trigger finder (`modules.detection.oracle_finder`): a model-independent source of
image regions, each returned as a boolean mask (H, W).

- `Felzenszwalb` (default, no weights): scikit-image's graph-based segmentation (Felzenszwalb &
  Huttenlocher), whose `scale` merges textured areas (a noise patch) into one region;
- `FastSAM`: the segmentation model Hossain et al. use, from a local weight file through the
  `ultralytics` package (not a dependency: install it where you run it). No download happens at run
  time; a missing file or package is an error naming the option.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch


class SegmentationOracle(ABC):
    """Regions of an image: `segments(pixels)` with pixels (3, H, W) in [0, 1] → boolean masks (H, W)."""

    @abstractmethod
    def segments(self, pixels: torch.Tensor) -> list[torch.Tensor]: ...


class Felzenszwalb(SegmentationOracle):
    """scikit-image's Felzenszwalb segmentation; regions smaller than `min_size` pixels are merged."""

    def __init__(self, scale: float = 300.0, sigma: float = 0.5, min_size: int = 16):
        """
        Args:
            scale: Higher merges more (at 32 px, 300 keeps the embedded BadNet patch as one region in most images).
            sigma: Gaussian smoothing before segmenting.
            min_size: Smallest region, in pixels.
        """
        if scale <= 0 or sigma < 0 or min_size < 1:
            raise ValueError(f"oracle: scale must be > 0, sigma ≥ 0 and min_size ≥ 1, got {scale}, {sigma}, {min_size}")
        self.scale = scale
        self.sigma = sigma
        self.min_size = min_size

    def segments(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        from skimage.segmentation import felzenszwalb

        labels = felzenszwalb(pixels.permute(1, 2, 0).double().numpy(), scale=self.scale, sigma=self.sigma,
                              min_size=self.min_size)
        return [torch.from_numpy(labels == value) for value in np.unique(labels)]


class FastSAM(SegmentationOracle):
    """FastSAM (Zhao et al.) from a local weight file, as Hossain et al. use it (everything mode)."""

    def __init__(self, weights: str = "", confidence: float = 0.4, iou: float = 0.9):
        """
        Args:
            weights: Path of a FastSAM weight file (e.g. FastSAM-s.pt) on local disk.
            confidence: Detection confidence threshold.
            iou: Non-maximum suppression IoU threshold.
        """
        if not weights or not Path(weights).is_file():
            raise ValueError(f"model.init_args.oracle.init_args.weights: FastSAM weight file {weights!r} does not exist "
                             "(download it yourself; nothing is fetched at run time)")
        try:
            from ultralytics import FastSAM as _FastSAM
        except ImportError as exn:
            raise ValueError("model.init_args.oracle: FastSAM needs the `ultralytics` package (pip install ultralytics)") from exn
        self.weights = weights
        self.confidence = confidence
        self.iou = iou
        self._model = _FastSAM(weights)

    def segments(self, pixels: torch.Tensor) -> list[torch.Tensor]:
        image = (pixels.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy()[..., ::-1].copy()  # RGB → BGR
        results = self._model(image, retina_masks=True, imgsz=max(image.shape[:2]), conf=self.confidence, iou=self.iou,
                              verbose=False)
        masks = results[0].masks
        return [] if masks is None else [m.bool().cpu() for m in masks.data]
