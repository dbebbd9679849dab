"""Pretraining objectives: SigLIP and CyCLIP against hand computations, their DDP forms (and CLIP's)
against one process on the concatenated batch, and (slow) a SigLIP pretraining whose bias survives export.

The fits of these tests: tests/integration/test_objectives_fit.py."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from modules.core.losses import cyclic_terms, make_clip_loss, make_siglip_loss

WORLD = 2
BATCH = 3


def _models():
    torch.manual_seed(0)
    return torch.nn.Linear(5, 4), torch.nn.Linear(3, 4)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn((WORLD * BATCH, 5), generator=g), torch.randn((WORLD * BATCH, 3), generator=g)


def _loss(objective: str, image, text, rank: int, world: int) -> torch.Tensor:
    if objective == "clip":
        return make_clip_loss(rank, world)(image, text, torch.tensor(10.0))
    if objective == "siglip":
        return make_siglip_loss(rank, world)(image, text, torch.tensor(10.0), torch.tensor(-3.0))
    terms = cyclic_terms(image, text, rank, world)
    return make_clip_loss(rank, world)(image, text, torch.tensor(10.0)) + terms["loss_cyclic_cross"] + terms["loss_cyclic_in"]


def _step(objective, image_model, text_model, images, texts, rank, world):
    img = F.normalize(image_model(images), dim=-1)
    txt = F.normalize(text_model(texts), dim=-1)
    loss = _loss(objective, img, txt, rank, world)
    loss.backward()
    return loss.detach(), [p.grad.clone() for m in (image_model, text_model) for p in m.parameters()]


def _worker(rank, port, objective, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    images, texts = _data()
    part = slice(rank * BATCH, (rank + 1) * BATCH)
    loss, grads = _step(objective, *_models(), images[part], texts[part], rank, WORLD)
    for g in grads:  # what DDP does to gradients
        dist.all_reduce(g)
        g /= WORLD
    dist.all_reduce(loss)
    out[rank] = (loss / WORLD, grads)
    dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_siglip_is_the_mean_pairwise_sigmoid_loss_with_its_bias():
    image = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1)
    text = F.normalize(torch.tensor([[1.0, 0.2], [0.0, 1.0], [-1.0, 1.0]]), dim=-1)
    scale, bias = 5.0, -2.0
    expected = 0.0
    for i in range(3):
        for j in range(3):
            z = 1.0 if i == j else -1.0
            expected -= math.log(1 / (1 + math.exp(-z * (scale * float(image[i] @ text[j]) + bias))))
    loss = make_siglip_loss()(image, text, torch.tensor(scale), torch.tensor(bias))
    assert loss.item() == pytest.approx(expected / 3, rel=1e-5)


def test_cyclic_terms_are_the_mean_squared_asymmetries():
    image = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    # ⟨I_j, T_k⟩ = [[.6, 1], [.8, 0]]; ⟨I_k, T_j⟩ = its transpose: differences ±0.2 off the diagonal
    # ⟨I_j, I_k⟩ = identity; ⟨T_j, T_k⟩ = [[1, .6], [.6, 1]]: differences ∓0.6 off the diagonal
    terms = cyclic_terms(image, text)
    assert terms["loss_cyclic_cross"].item() == pytest.approx(2 * 0.2 ** 2 / 4)
    assert terms["loss_cyclic_in"].item() == pytest.approx(2 * 0.6 ** 2 / 4)
    aligned = cyclic_terms(image, image)
    assert aligned["loss_cyclic_cross"].item() == 0 and aligned["loss_cyclic_in"].item() == 0


@pytest.mark.parametrize("objective", ["clip", "siglip", "cyclip"])
def test_ddp_loss_and_gradients_match_one_process_on_the_whole_batch(objective):
    """Under DDP (2 processes, gloo, CPU) each loss over all ranks' features, with gradients, equals one
    process on the concatenated batch: the loss averaged over ranks, and DDP-averaged gradients."""
    out = mp.Manager().dict()
    mp.spawn(_worker, args=(_free_port(), objective, out), nprocs=WORLD, join=True)
    images, texts = _data()
    loss, grads = _step(objective, *_models(), images, texts, 0, 1)
    for rank in range(WORLD):
        rank_loss, rank_grads = out[rank]
        assert torch.allclose(rank_loss, loss, atol=1e-6)
        for a, b in zip(rank_grads, grads):
            assert torch.allclose(a, b, atol=1e-6)
