"""Token-level attribution and gating for UBT's unlearning, on any open_clip CLIP model.

Tokens are the activations where each tower turns its input into a sequence:
- text: the output of `token_embedding`, (N, L, D), one row per BPE token (padding excluded);
- ViT image tower: the output of the patch embedding `visual.conv1`, (N, D, gh, gw), one per patch;
  or, with `vit_block=k`, the sequence leaving transformer block k, (N, 1 + patches, D) (class token
  first), so that the layers below the tokens (patch embedding to block k) have the capacity to unlearn;
- ModifiedResNet image tower: the feature map entering `visual.attnpool`, (N, C, H, W), one per
  spatial position (a 32-pixel input ends in 1×1: a single position, so all of it).

`TokenTap` hooks those points. In "record" mode it keeps the activations so that the attribution of a
score to each token, grad × activation summed over channels, can be taken with `torch.autograd.grad`.
In "gate" mode it lets gradient flow only through the chosen tokens: x·m + x.detach()·(1 − m), so the
forward value is unchanged and the unlearning acts through those tokens alone.
`captured_image_tokens` and `image_tokens_only` read the image tokens without changing them (the
latter ends the forward pass there), for UBT's token retain loss.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Literal, Optional

import torch
from torch import nn


def token_attribution(activation: torch.Tensor, grad: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """Per-token contribution (grad × activation summed over channels), flattened to (N, tokens)."""
    contribution = (activation * grad).sum(dim=channel_dim)
    return contribution.flatten(1)


def top_token_mask(scores: torch.Tensor, k: int, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(N, T) boolean mask of the k highest-scoring valid tokens of each row (fewer if fewer are valid)."""
    if k < 1:
        raise ValueError(f"the number of tokens to unlearn through must be ≥ 1, got {k}")
    if valid is not None:
        scores = scores.masked_fill(~valid, float("-inf"))
    k = min(k, scores.shape[1])
    index = scores.topk(k, dim=1).indices
    mask = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, index, True)
    return mask if valid is None else mask & valid


def gate(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x with gradient only through the masked tokens; `mask` broadcasts against x."""
    m = mask.to(x.dtype)
    return x * m + x.detach() * (1 - m)


def image_token_site(visual: nn.Module, vit_block: Optional[int] = None) -> tuple[nn.Module, Literal["output", "input"], int]:
    """Where the image tower's tokens are (module, input or output, channel dim): a ModifiedResNet's
    attention-pool input, a ViT's patch embedding output, or the output of ViT block `vit_block`."""
    if hasattr(visual, "attnpool"):
        if vit_block is not None:
            raise ValueError("model.image_token_block applies to a ViT; this image tower is a ModifiedResNet")
        return visual.attnpool, "input", 1
    if hasattr(visual, "conv1") and hasattr(visual, "transformer"):
        if vit_block is None:
            return visual.conv1, "output", 1
        blocks = visual.transformer.resblocks
        if not 0 <= vit_block < len(blocks):
            raise ValueError(f"model.image_token_block {vit_block} is not a block of this ViT (0..{len(blocks) - 1})")
        if (vit_block == len(blocks) - 1 and getattr(visual, "pool_type", None) == "tok"
                and getattr(visual, "attn_pool", None) is None):
            raise ValueError(f"model.image_token_block {vit_block} is this ViT's last block, whose tokens reach the "
                             "output only through the class token (no token would be singled out); "
                             f"choose one of 0..{len(blocks) - 2}")
        assert getattr(visual.transformer, "batch_first", True), "the block outputs are taken as (N, L, D)"
        return blocks[vit_block], "output", -1
    raise ValueError(f"no image tokens known for a {type(visual).__name__} tower (ViT and ModifiedResNet are supported)")


class TokenTap:
    """Context manager hooking the text and image token activations of `model` (see module docstring)."""

    def __init__(self, model: nn.Module, vit_block: Optional[int] = None):
        self.model = model
        self.vit_block = vit_block
        self.image_channel_dim = image_token_site(model.visual, vit_block)[2]
        self.mode: Literal["record", "gate"] = "record"
        self.text: Optional[torch.Tensor] = None
        self.image: Optional[torch.Tensor] = None
        self.text_mask: Optional[torch.Tensor] = None
        self.image_mask: Optional[torch.Tensor] = None
        self._handles: list = []

    def __enter__(self) -> "TokenTap":
        self._handles.append(self.model.token_embedding.register_forward_hook(self._on_text))
        module, where, _ = image_token_site(self.model.visual, self.vit_block)
        if where == "input":
            self._handles.append(module.register_forward_pre_hook(self._on_image_input))
        else:
            self._handles.append(module.register_forward_hook(self._on_image_output))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def record(self) -> None:
        self.mode, self.text, self.image = "record", None, None

    def gate_with(self, text_mask: torch.Tensor, image_mask: torch.Tensor) -> None:
        """Masks of shape (N, L) and (N, image tokens)."""
        self.mode, self.text_mask, self.image_mask = "gate", text_mask, image_mask

    def _on_text(self, module, args, output):
        if self.mode == "record":  # a leaf that asks for grad, whether or not the layers below are trainable
            self.text = output.detach().requires_grad_(True)
            return self.text
        return gate(output, self.text_mask.unsqueeze(-1))

    def _image(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "record":
            self.image = x.detach().requires_grad_(True)
            return self.image
        if self.image_channel_dim == 1:
            return gate(x, self.image_mask.view(x.shape[0], 1, *x.shape[2:]))
        return gate(x, self.image_mask.view(*x.shape[:-1], 1))

    def _on_image_input(self, module, args):
        return (self._image(args[0]),)

    def _on_image_output(self, module, args, output):
        return self._image(output)


class _ReachedSite(Exception):
    """Raised by a hook to end a forward pass once the image tokens are computed."""


@contextlib.contextmanager
def captured_image_tokens(visual: nn.Module, vit_block: Optional[int] = None, stop: bool = False) -> Iterator[list[torch.Tensor]]:
    """Collects the image tokens of every forward pass of `visual` inside the block (with their graph).
    With `stop`, a forward pass ends at the tokens; call it through `image_tokens_only`."""
    module, where, _ = image_token_site(visual, vit_block)
    captured: list[torch.Tensor] = []

    def keep(tokens: torch.Tensor) -> None:
        captured.append(tokens)
        if stop:
            raise _ReachedSite

    handle = (module.register_forward_pre_hook(lambda m, args: keep(args[0])) if where == "input"
              else module.register_forward_hook(lambda m, args, output: keep(output)))
    try:
        yield captured
    finally:
        handle.remove()


def image_tokens_only(visual: nn.Module, images: torch.Tensor, vit_block: Optional[int] = None) -> torch.Tensor:
    """The image tokens of `images`, running `visual` only as far as the token site."""
    with captured_image_tokens(visual, vit_block, stop=True) as captured:
        try:
            visual(images)
        except _ReachedSite:
            pass
    assert len(captured) == 1, "the forward pass reaches the token site once"
    return captured[0]
