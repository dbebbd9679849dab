"""Retrieval recall@k and the retrieval ASR (modules/core/retrieval_metrics.py) on hand-made embeddings:
against a brute-force count, against torchmetrics' RetrievalHitRate, with ties, with the target's own
images left out of the ASR, and over 2 ranks (gloo) equal to one process."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torchmetrics.retrieval import RetrievalHitRate

from modules.core.retrieval_metrics import RetrievalRecall, hits_at_k


def _brute_force_hit(scores: torch.Tensor, positive: torch.Tensor, k: int) -> torch.Tensor:
    """Query by query: sort the candidates, a negative before a positive at equal score; hit when a positive
    is among the first k."""
    hits = []
    for row, mask in zip(scores.tolist(), positive.tolist()):
        order = sorted(range(len(row)), key=lambda j: (-row[j], mask[j]))
        hits.append(any(mask[j] for j in order[:k]))
    return torch.tensor(hits)


def _embeddings(n: int, dim: int = 8, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_hits_equal_a_brute_force_count_and_torchmetrics_without_ties(k):
    queries, candidates = _embeddings(30, seed=1), _embeddings(40, seed=2)
    positive = torch.rand(30, 40, generator=torch.Generator().manual_seed(3)) < 0.1
    positive[0] = False  # a query with no positive never hits
    hits = hits_at_k(queries, candidates, positive, ks=(k,))[k]
    scores = queries @ candidates.T
    assert torch.equal(hits, _brute_force_hit(scores, positive, k))
    assert not hits[0]
    indexes = torch.arange(30)[:, None].expand(-1, 40)
    keep = positive.any(dim=1)  # torchmetrics skips queries without a positive by default (empty_target_action)
    reference = RetrievalHitRate(top_k=k)(scores[keep].flatten(), positive[keep].flatten(), indexes[keep].flatten())
    assert hits[keep].float().mean().item() == pytest.approx(reference.item())


def test_a_tie_between_a_positive_and_a_negative_counts_against_the_query():
    candidates = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # candidates 0 and 1 embed alike
    queries = torch.tensor([[1.0, 0.0]])
    hits = hits_at_k(queries, candidates, torch.tensor([[False, True, False]]), ks=(1, 2))
    assert not hits[1][0] and hits[2][0]
    # a model that embeds every image alike finds nothing at k=1, not everything
    collapsed = torch.ones(5, 2) / 2 ** 0.5
    assert not hits_at_k(_embeddings(5, dim=2), collapsed, torch.eye(5, dtype=torch.bool), ks=(1,))[1].any()


def _retrieval_case(seed: int = 0):
    """6 images with 2 captions each (caption j belongs to image j // 2), placed in the set as `positions`."""
    images, captions = _embeddings(6, seed=seed), _embeddings(12, seed=seed + 1)
    captions = F.normalize(captions + 1.5 * images.repeat_interleave(2, dim=0), dim=-1)  # mostly near their image
    return images, torch.arange(6), captions, torch.arange(6).repeat_interleave(2)


def test_recall_both_ways_is_the_brute_force_recall_over_each_images_captions():
    images, positions, captions, caption_positions = _retrieval_case()
    metric = RetrievalRecall()
    order = torch.tensor([3, 0, 5, 1, 4, 2])  # the images' order in the batches does not matter
    metric.update(images[order], positions[order], captions, caption_positions)
    values = metric.compute()
    own = caption_positions[None, :] == positions[:, None]
    scores = images @ captions.T
    for k in (1, 5, 10):
        assert values[f"i2t_r{k}"].item() == pytest.approx(_brute_force_hit(scores, own, k).float().mean().item())
        assert values[f"t2i_r{k}"].item() == pytest.approx(_brute_force_hit(scores.T, own.T, k).float().mean().item())
    assert values["i2t_r10"].item() == 1.0  # 12 captions: 10 of them include one of each image's two


def test_retrieval_asr_leaves_out_images_whose_captions_name_the_target():
    images, positions, captions, caption_positions = _retrieval_case()
    names_target = torch.zeros(12, dtype=torch.bool)
    names_target[[0, 1]] = True  # image 0 shows the target (both its captions name it)
    # the trigger sends every image onto image 0's first caption: all five others retrieve the target
    triggered = captions[0].expand(6, -1).clone()
    metric = RetrievalRecall(asr=["asr"])
    metric.update(images, positions, captions, caption_positions, {"asr": triggered}, {"asr": names_target})
    assert metric.compute()["asr_hit1"].item() == 1.0
    # the five non-target images triggered to nothing in particular: image 0 staying on target does not count
    triggered[1:] = images[1:]
    metric = RetrievalRecall(asr=["asr"])
    metric.update(images, positions, captions, caption_positions, {"asr": triggered}, {"asr": names_target})
    clean_hits = _brute_force_hit(images[1:] @ captions.T, names_target[None, :].expand(5, -1), 1)
    assert metric.compute()["asr_hit1"].item() == pytest.approx(clean_hits.float().mean().item())


def test_a_text_trigger_retrieves_target_images_for_captions_of_other_content_only():
    images, positions, captions, caption_positions = _retrieval_case()
    names_target = torch.zeros(12, dtype=torch.bool)
    names_target[[0, 1]] = True  # image 0 shows the target
    # with the phrase, every caption lands on image 0; its own captions (and any naming the target) do not count
    triggered = images[0].expand(12, -1).clone()
    metric = RetrievalRecall(asr=["asr"], side="text")
    metric.update(images, positions, captions, caption_positions, {"asr": triggered}, {"asr": names_target})
    assert metric.compute()["asr_hit1"].item() == 1.0
    # the phrase does nothing: the ten other captions retrieve their own images, not image 0, at k=1
    metric = RetrievalRecall(asr=["asr"], side="text")
    metric.update(images, positions, captions, caption_positions, {"asr": captions}, {"asr": names_target})
    expected = _brute_force_hit(captions[2:] @ images.T, (positions == 0)[None, :].expand(10, -1), 1)
    assert metric.compute()["asr_hit1"].item() == pytest.approx(expected.float().mean().item())


WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    images, positions, captions, caption_positions = _retrieval_case(seed=7)
    names = caption_positions == 2
    mine = positions[rank::WORLD]  # the strided share a rank evaluates (RankLocalSampler)
    text = torch.isin(caption_positions, mine)
    metric = RetrievalRecall(asr=["asr"])
    metric.update(images[mine], mine, captions[text], caption_positions[text], {"asr": captions[4:5].expand(len(mine), -1)},
                  {"asr": names[text]})
    out[rank] = {name: value.item() for name, value in metric.compute().items()}
    dist.destroy_process_group()


def test_two_ranks_compute_what_one_process_computes_on_the_whole_set():
    out = mp.Manager().dict()
    mp.spawn(_rank_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    images, positions, captions, caption_positions = _retrieval_case(seed=7)
    metric = RetrievalRecall(asr=["asr"])
    metric.update(images, positions, captions, caption_positions, {"asr": captions[4:5].expand(6, -1)},
                  {"asr": caption_positions == 2})
    whole = {name: value.item() for name, value in metric.compute().items()}
    assert out[0] == out[1] == pytest.approx(whole)
    assert whole["asr_hit1"] == 1.0 and set(whole) >= {"i2t_r1", "t2i_r5", "asr_hit10"}
