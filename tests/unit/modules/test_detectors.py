"""Density detectors on hand-made embeddings: sparse planted points are ranked first, the scores match
their definitions on a small case, and a reference sample gives the ranking of the full reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from modules.detection.detectors import DETECTORS, local_density_scores, reference_rows
from modules.detection.pair_scoring import detection_metrics


def _clusters_with_sparse_plants(seed=0, dim=16, classes=5, per_class=60, planted=8):
    """Clean samples in tight class clusters; planted samples spread far from every cluster and from
    each other (Huang et al.: poisoned samples are sparse in their local neighbourhood)."""
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    clean = torch.cat([centres[c] + 0.05 * torch.randn(per_class, dim, generator=g) for c in range(classes)])
    plants = torch.randn(planted, dim, generator=g)
    keys = [f"c{i}" for i in range(len(clean))] + [f"p{i}" for i in range(planted)]
    return torch.cat([clean, plants]), keys, {f"p{i}" for i in range(planted)}


@pytest.mark.parametrize("name", DETECTORS)
def test_each_detector_ranks_sparse_planted_samples_first(name):
    embeddings, keys, planted = _clusters_with_sparse_plants()
    scores = local_density_scores(embeddings, k=8)[name]
    metrics = detection_metrics(dict(zip(keys, scores.tolist())), planted, ks=[8])
    assert metrics["auroc"] == pytest.approx(1.0) and metrics["precision@8"] == pytest.approx(1.0)


def test_scores_match_their_definitions_on_a_line():
    # points on a line (after normalisation they stay distinct): 0, 1, 2, 3 and a far point 10 (k = 1)
    points = torch.tensor([[1.0, 0.0], [1.0, 0.1], [1.0, 0.2], [1.0, 0.3], [1.0, 1.5]])
    x = F.normalize(points, dim=-1)
    d = torch.cdist(x, x) + torch.diag(torch.full((5,), float("inf")))
    kdist = d.min(1).values
    nearest = d.argmin(1)
    scores = local_density_scores(points, k=1)
    assert torch.allclose(scores["kdist"], kdist)
    assert torch.allclose(scores["slof"], kdist / kdist[nearest])
    lid = -1 / torch.log(torch.tensor(1.0) + 1e-4)  # k = 1: log(d_1 / d_1)
    assert torch.allclose(scores["dao"], lid * torch.log(kdist / kdist[nearest]), rtol=1e-4)
    assert scores["kdist"].argmax() == 4


def test_a_reference_sample_keeps_the_ranking_of_the_planted_points():
    embeddings, keys, planted = _clusters_with_sparse_plants(seed=1, per_class=200)
    rows = reference_rows(len(embeddings), 256, seed=0)
    scores = local_density_scores(embeddings, k=8, reference_rows=rows)["kdist"]
    assert detection_metrics(dict(zip(keys, scores.tolist())), planted, ks=[8])["precision@8"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="k = 8"):
        local_density_scores(embeddings[:5], k=8)


def test_gmm_split_finds_the_low_similarity_mode_of_a_bimodal_set():
    from modules.detection.detectors import gmm_risk

    generator = torch.Generator().manual_seed(0)
    clean = 0.30 + 0.03 * torch.randn(900, generator=generator)
    risky = 0.05 + 0.03 * torch.randn(100, generator=generator)
    order = torch.randperm(1000, generator=generator)
    similarity = torch.cat([clean, risky])[order]
    planted = (order >= 900)
    risk = gmm_risk(similarity)
    low = similarity < 0.175  # the midpoint between the modes
    assert risk[low].min() > 0.9 and risk[~low].max() < 0.1
    assert risk[planted].mean() > 0.9 and risk[~planted].mean() < 0.05
    with pytest.raises(ValueError, match="at least 4"):
        gmm_risk(torch.tensor([0.1, 0.2]))
