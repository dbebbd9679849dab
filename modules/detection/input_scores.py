"""Test-time scores of single inputs: is this image carrying a trigger? Pure functions over embeddings and
an image encoder, the model never changed; a higher score means more suspicious. Run on a run's eval set by
`modules.detection.input_detection.DetectTriggeredInputs`.

- `contrast_scores` (BDetCLIP, Niu et al., ICML 2025): an image's cosine similarity to each class's
  *benign* descriptions minus its similarity to that class's *malignant* ones (the class prompt with an
  unrelated sentence attached), summed over the classes. A clean image's similarity follows the text's
  meaning and drops when the description goes astray; a triggered image's embedding answers to the
  trigger, not the text, and barely moves. BDetCLIP flags a small difference; the score is its negative.
  Read from the authors' evaluation code (Purshow/BDetCLIP_badCLIP, `src/evaluate.py`): they average the
  normalised text embeddings per class, take `(logits_benign − logits_malignant).sum(classes)` and threshold
  it from below. As a sum over classes it is one projection of the image embedding,
  onto Σ_c (benign_c − malignant_c).
- `masking_scores` (after BackdoorIDS, arXiv 2603.11664): the image is masked cell by cell in a random
  order that grows (each step masks one more cell of a grid), and embedded at every step. A triggered
  image holds the target's embedding until the cell with the trigger is covered, then jumps to its
  content's; a clean image drifts smoothly. BackdoorIDS clusters the trajectory with DBSCAN and flags more
  than one cluster; a table needs a ranking, so the score here is the trajectory's largest step (cosine
  distance between consecutive embeddings), the quantity that splits it. No code of the authors was found;
  the grid, the fill (the pixel mean: 0 after normalisation) and the order are our choices.

`detection_rates` turns the scores of clean and triggered images into AUROC and TPR at 5% FPR.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAUROC, BinaryROC


def contrast_scores(images: torch.Tensor, benign: torch.Tensor, malignant: torch.Tensor) -> torch.Tensor:
    """(N,) BDetCLIP's score of normalised image embeddings (N, D) against per-class benign and malignant
    description embeddings (C, D) each (every row the normalised mean of one class's descriptions)."""
    assert benign.shape == malignant.shape and images.shape[1] == benign.shape[1]
    return -(images.float() @ (benign.float() - malignant.float()).t()).sum(dim=1)


def description_embeddings(encode_text: Callable[[torch.Tensor], torch.Tensor], tokenizer,
                           descriptions: list[list[str]], device: torch.device | str) -> torch.Tensor:
    """(C, D): per class, the normalised mean of its descriptions' normalised text embeddings (the zero-shot
    classifier's construction, and BDetCLIP's)."""
    rows = []
    for texts in descriptions:
        embedded = F.normalize(encode_text(tokenizer(texts).to(device)).float(), dim=-1).mean(dim=0)
        rows.append(F.normalize(embedded, dim=0))
    return torch.stack(rows)


def masking_orders(indices: torch.Tensor, cells: int, seed: int) -> torch.Tensor:
    """(N, cells): the order in which each image's grid cells are masked, a permutation drawn from (seed, the
    image's index in its set), so that a score depends neither on batching nor on the rank."""
    orders = [torch.randperm(cells, generator=torch.Generator().manual_seed(seed * 1_000_003 + int(index)))
              for index in indices]
    return torch.stack(orders) if orders else torch.zeros(0, cells, dtype=torch.long)


def masked_views(images: torch.Tensor, orders: torch.Tensor, grid: int, steps: int) -> torch.Tensor:
    """(N, steps + 1, C, H, W): each image with its first 0, 1, …, `steps` cells (in its order) set to 0."""
    n, channels, height, width = images.shape
    assert orders.shape == (n, grid * grid) and 0 < steps <= grid * grid
    rows = torch.arange(height, device=images.device) * grid // height
    cols = torch.arange(width, device=images.device) * grid // width
    cell_of_pixel = rows[:, None] * grid + cols[None, :]                          # (H, W)
    rank = torch.empty_like(orders)
    rank.scatter_(1, orders, torch.arange(grid * grid).expand(n, -1).contiguous())  # when each cell is masked
    pixel_rank = rank.to(images.device)[:, cell_of_pixel]                          # (N, H, W)
    step = torch.arange(steps + 1, device=images.device)
    keep = pixel_rank[:, None] >= step[None, :, None, None]                        # (N, T, H, W)
    return images[:, None] * keep[:, :, None].to(images.dtype)


def trajectory_jumps(trajectory: torch.Tensor) -> torch.Tensor:
    """(N, T − 1): cosine distance between consecutive embeddings of each trajectory (N, T, D)."""
    x = F.normalize(trajectory.float(), dim=-1)
    return 1.0 - (x[:, 1:] * x[:, :-1]).sum(dim=-1)


@torch.no_grad()
def masking_scores(encode_image: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, indices: torch.Tensor,
                   grid: int = 4, steps: int = 12, seed: int = 0, chunk: int = 512) -> torch.Tensor:
    """(N,) the largest step of each image's masking trajectory (`steps` + 1 embeddings per image); `indices`
    are the images' places in their set (their masking orders)."""
    assert len(indices) == len(images)
    orders = masking_orders(indices, grid * grid, seed)
    views = masked_views(images, orders, grid, steps).flatten(0, 1)
    embedded = torch.cat([encode_image(views[start:start + chunk]) for start in range(0, len(views), chunk)])
    return trajectory_jumps(embedded.view(len(images), steps + 1, -1)).max(dim=1).values


def detection_rates(clean: torch.Tensor, triggered: torch.Tensor, max_fpr: float = 0.05) -> dict[str, float]:
    """AUROC of the scores as a detector of triggered images, and the largest TPR whose FPR (the share of
    clean images flagged) is at most `max_fpr` (torchmetrics' ROC)."""
    assert len(clean) and len(triggered), "rates need clean and triggered scores"
    scores = torch.cat([clean, triggered]).double()
    target = torch.cat([torch.zeros(len(clean)), torch.ones(len(triggered))]).long()
    fpr, tpr, _ = BinaryROC()(scores, target)
    return {"auroc": BinaryAUROC()(scores, target).item(), f"tpr_at_{round(max_fpr * 100)}fpr": tpr[fpr <= max_fpr].max().item()}
