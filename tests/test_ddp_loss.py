"""Under DDP (2 processes, gloo, CPU) the contrastive loss over all ranks' features, with gradients,
equals one process on the concatenated batch: loss (averaged over ranks) and DDP-averaged gradients."""

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from modules.losses import make_clip_loss

WORLD = 2
BATCH = 6


def _models():
    torch.manual_seed(0)
    return torch.nn.Linear(5, 4), torch.nn.Linear(3, 4)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn((WORLD * BATCH, 5), generator=g), torch.randn((WORLD * BATCH, 3), generator=g)


def _step(image_model, text_model, images, texts, clip_loss):
    img = torch.nn.functional.normalize(image_model(images), dim=-1)
    txt = torch.nn.functional.normalize(text_model(texts), dim=-1)
    loss = clip_loss(img, txt, torch.tensor(10.0))
    loss.backward()
    grads = [p.grad.clone() for m in (image_model, text_model) for p in m.parameters()]
    return loss.detach(), grads


def _worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    images, texts = _data()
    part = slice(rank * BATCH, (rank + 1) * BATCH)
    loss, grads = _step(*_models(), images[part], texts[part], make_clip_loss(rank, WORLD))
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


def test_gathered_loss_and_gradients_match_one_process_on_the_whole_batch():
    manager = mp.Manager()
    out = manager.dict()
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    images, texts = _data()
    loss, grads = _step(*_models(), images, texts, make_clip_loss(0, 1))
    for rank in range(WORLD):
        rank_loss, rank_grads = out[rank]
        assert torch.allclose(rank_loss, loss, atol=1e-6)
        for a, b in zip(rank_grads, grads):
            assert torch.allclose(a, b, atol=1e-6)
