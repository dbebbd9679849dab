"""Contrastive losses as pure functions over embeddings.

The multimodal term is open_clip's ClipLoss (it gathers features across ranks, with gradients and
local loss under DDP). The unimodal terms pair a view with its augmented view the same way, so each
is a symmetric InfoNCE: CE(τ·A·Bᵀ, diag) and CE(τ·B·Aᵀ, diag), averaged. SigLIP is open_clip's
SigLipLoss (pairwise sigmoid, a learned bias; texts passed between neighbouring ranks). CyCLIP adds
to the multimodal term its two cyclic consistency terms, each rank's rows against every rank's
features, so that the mean over ranks equals the loss of one process on the whole batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.loss import ClipLoss, SigLipLoss, gather_features

MAX_LOGIT_SCALE = 100.0


def clamped_logit_scale(logit_scale: torch.Tensor) -> torch.Tensor:
    """exp(logit_scale) capped at 100, computed in the forward pass (an in-place clamp of the
    parameter is lost when DeepSpeed ZeRO copies its fp32 master weights back)."""
    return logit_scale.clamp(max=torch.log(torch.tensor(MAX_LOGIT_SCALE)).item()).exp()


def info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor | float, reduction: str = "mean") -> torch.Tensor:
    """Symmetric InfoNCE of normalised features within one batch, row i of `a` paired with row i of `b`:
    ½[CE(τ·A·Bᵀ) + CE(τ·B·Aᵀ)]; `reduction="none"` gives each pair's loss. For training terms that must
    gather across ranks use `make_clip_loss` (open_clip's ClipLoss computes the same on one rank)."""
    logits = scale * a @ b.t()
    labels = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, labels, reduction=reduction) + F.cross_entropy(logits.t(), labels, reduction=reduction)) / 2


def make_clip_loss(rank: int = 0, world_size: int = 1) -> ClipLoss:
    return ClipLoss(local_loss=True, gather_with_grad=True, cache_labels=True, rank=rank, world_size=world_size)


def make_siglip_loss(rank: int = 0, world_size: int = 1) -> SigLipLoss:
    return SigLipLoss(rank=rank, world_size=world_size, dist_impl="bidir")


SIGLIP_INIT_LOGIT_BIAS = -10.0
"""SigLIP's initial logit bias (Zhai et al. 2023), so that the many negative pairs start near p = 0."""


def cyclic_terms(image: torch.Tensor, text: torch.Tensor, rank: int = 0, world_size: int = 1) -> dict[str, torch.Tensor]:
    """CyCLIP's consistency terms (Goel et al. 2022) over normalised features, unscaled similarities:
    cross-modal mean_jk (⟨I_j, T_k⟩ − ⟨I_k, T_j⟩)² and in-modal mean_jk (⟨I_j, I_k⟩ − ⟨T_j, T_k⟩)².
    Under DDP, j runs over this rank's rows and k over every rank's (gathered with gradients)."""
    if world_size > 1:
        all_image, all_text = gather_features(image, text, gather_with_grad=True, rank=rank, world_size=world_size)
    else:
        all_image, all_text = image, text
    cross = (image @ all_text.t() - text @ all_image.t()).pow(2).mean()
    inmodal = (image @ all_image.t() - text @ all_text.t()).pow(2).mean()
    return {"loss_cyclic_cross": cross, "loss_cyclic_in": inmodal}


def ssl_loss(clip_loss: ClipLoss, image: torch.Tensor, image_aug: torch.Tensor, text: torch.Tensor,
             text_aug: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """CleanCLIP's L_SS: image ↔ augmented image plus text ↔ augmented text, each symmetric InfoNCE."""
    return clip_loss(image, image_aug, scale) + clip_loss(text, text_aug, scale)


def cleanclip_loss(clip_loss: ClipLoss, image: torch.Tensor, text: torch.Tensor, image_aug: torch.Tensor,
                   text_aug: torch.Tensor, scale: torch.Tensor, lambda_clip: float = 1.0,
                   lambda_ss: float = 1.0) -> dict[str, torch.Tensor]:
    """L = λ1·L_CLIP(I, T) + λ2·L_SS; returns the total and both terms."""
    clip = clip_loss(image, text, scale)
    ss = ssl_loss(clip_loss, image, image_aug, text, text_aug, scale)
    return {"loss": lambda_clip * clip + lambda_ss * ss, "loss_clip": clip, "loss_ss": ss}


def relative_squared_change(features: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """‖features − reference‖² / ‖reference‖²: how far features moved from a frozen reference, scale-free."""
    return (features - reference).pow(2).sum() / reference.pow(2).sum().clamp_min(torch.finfo(reference.dtype).tiny)


def safeclip_loss(image: torch.Tensor, text: torch.Tensor, image_aug: torch.Tensor, text_aug: torch.Tensor,
                  safe: torch.Tensor, scale: torch.Tensor | float, unimodal_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """SafeCLIP's split loss over one batch of normalised features: the multimodal InfoNCE among the
    `safe` rows (bool (N,)) and, on the other (risky) rows, the unimodal InfoNCE of each image with its
    augmented view and each caption with its augmented caption (the mean of the two). A term with fewer
    than two rows is zero. All rows safe: the CLIP loss; none: unimodal warm-up."""
    zero = image.new_zeros(())
    risky = ~safe
    clip = info_nce(image[safe], text[safe], scale) if int(safe.sum()) >= 2 else zero
    unimodal = ((info_nce(image[risky], image_aug[risky], scale) + info_nce(text[risky], text_aug[risky], scale)) / 2
                if int(risky.sum()) >= 2 else zero)
    return {"loss": clip + unimodal_weight * unimodal, "loss_clip": clip, "loss_unimodal": unimodal}
