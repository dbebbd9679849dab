"""Training part of a model: which parameters take gradients, and frozen normalisation kept frozen."""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch.nn.modules.batchnorm import _BatchNorm


def freeze_all_but(model: torch.nn.Module, prefixes: list[str]) -> list[str]:
    """requires_grad only on parameters whose name starts with one of `prefixes`; returns their names."""
    names = [name for name, _ in model.named_parameters()]
    trainable = [n for n in names if any(n.startswith(p) for p in prefixes)]
    if not trainable:
        examples = ", ".join(sorted({n.rsplit(".", 2)[0] for n in names})[:12])
        raise ValueError(f"model.trainable {prefixes} matches no parameter; parameter names start like: {examples}")
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return trainable


def token_local_parameters(model: torch.nn.Module, vit_block: Optional[int] = None) -> list[str]:
    """The parameters whose forget gradient the token gates control (see the module docstring)."""
    if hasattr(model.visual, "attnpool"):
        return ["token_embedding", "visual.layer4"]
    if vit_block is None:
        return ["token_embedding", "visual.conv1"]
    below = ["visual.conv1", "visual.class_embedding", "visual.positional_embedding", "visual.ln_pre"]
    return ["token_embedding", *below, *(f"visual.transformer.resblocks.{i}." for i in range(vit_block + 1))]


def keep_frozen_norms_in_eval(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, _BatchNorm) and not any(p.requires_grad for p in module.parameters()):
            module.eval()


@contextlib.contextmanager
def _no_param_grads(model: torch.nn.Module):
    """The attribution pass needs gradients w.r.t. activations only."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
