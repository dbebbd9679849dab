"""UBT stage 1: the per-pair loss and weights on hand-made tensors, and detection metrics on a planted
ranking. The end-to-end ranking of planted poisoned pairs is tests/test_ubt_fit.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modules.detection.discovery import SuspiciousPairDiscovery
from modules.detection.pair_scoring import (
    cluster_scores,
    detection_metrics,
    per_pair_clip_loss,
    rank_keys,
    weak_pair_weights,
)


def test_per_pair_loss_matches_a_direct_computation_and_averages_to_the_clip_loss():
    image = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=1)
    text = F.normalize(torch.tensor([[0.9, 0.1], [0.0, 1.0], [-0.3, 1.0]]), dim=1)
    losses = per_pair_clip_loss(image, text, 10.0)
    sim = 10.0 * image @ text.t()
    for i in range(3):
        row = -sim[i, i] + torch.logsumexp(sim[i], 0)
        col = -sim[i, i] + torch.logsumexp(sim[:, i], 0)
        assert losses[i].item() == pytest.approx(((row + col) / 2).item(), rel=1e-4)
    from open_clip.loss import ClipLoss
    assert losses.mean().item() == pytest.approx(ClipLoss()(image, text, 10.0).item(), rel=1e-4)


def test_weak_pairs_weigh_more_and_weights_average_one():
    weights = weak_pair_weights(torch.tensor([0.9, 0.5, 0.1]), temperature=0.1)
    assert weights[2] > weights[1] > weights[0]
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights[2].item() / weights[1].item() == pytest.approx(math.exp(4.0), rel=1e-5)


def test_detection_metrics_of_a_planted_ranking():
    scores = {f"k{i:02d}": float(i) for i in range(20)}  # k19 highest
    poisoned = {"k19", "k18", "k17", "k03"}
    m = detection_metrics(scores, poisoned, ks=[3, 4])
    assert m["precision@3"] == pytest.approx(1.0) and m["recall@3"] == pytest.approx(0.75)
    assert m["precision@4"] == pytest.approx(0.75)
    # AUROC: of 4 × 16 (poisoned, clean) pairs, k03 ranks below 16 - 3 = 13 clean keys
    assert m["auroc"] == pytest.approx((3 * 16 + 3) / 64)
    assert rank_keys(scores)[:2] == ["k19", "k18"]
    negated = detection_metrics({k: -v for k, v in scores.items()}, {"k00", "k01", "k10"}, ks=[2, 3])
    assert negated["precision@2"] == pytest.approx(1.0) and negated["recall@3"] == pytest.approx(2 / 3)


def test_rankings_by_the_overfitted_model_are_refused_without_overfitting():
    with pytest.raises(ValueError, match="model.overfit"):
        SuspiciousPairDiscovery(score="after", overfit=False)
    with pytest.raises(ValueError, match="model.overfit false"):
        SuspiciousPairDiscovery(score="cluster", overfit=True)
    with pytest.raises(ValueError, match="cluster_seed"):
        SuspiciousPairDiscovery(score="cluster", overfit=False, top_m=200, cluster_seed=100)


def test_cluster_score_ranks_planted_look_alike_images_above_weak_clean_pairs():
    torch.manual_seed(0)
    clean = F.normalize(torch.randn(40, 8), dim=-1)  # spread over directions, like images of many classes
    trigger = F.normalize(torch.randn(8), dim=0)
    planted = F.normalize(trigger + 0.1 * torch.randn(6, 8), dim=-1)  # the triggered images point one way
    keys = [f"c{i:02d}" for i in range(40)] + [f"p{i}" for i in range(6)]
    similarity = {k: 0.6 + 0.01 * i for i, k in enumerate(keys[:40])}
    similarity.update({k: 0.3 for k in keys[40:]})  # weak, as poisoned pairs are under the poisoned model
    for k in keys[:8]:  # clean pairs weaker still: `weak` alone ranks them first
        similarity[k] = 0.1
    embeddings = [(keys[:23], clean[:23].half()), (keys[23:40] + keys[40:], torch.cat([clean[23:], planted]).half())]
    assert set(rank_keys({k: -v for k, v in similarity.items()})[:6]) <= set(keys[:8])
    scores = cluster_scores(similarity, embeddings, seed=14)  # the 8 weak clean pairs and the 6 planted ones
    assert set(rank_keys(scores)[:6]) == set(keys[40:])
    assert set(scores) == set(keys)


@pytest.mark.parametrize("stage", ["discovery", "oracle"])
def test_the_one_device_stages_refuse_two_ranks_naming_the_strategy_and_the_fix(stage):
    """UBT's discovery and the oracle finder make one pass over the defender's data: on more ranks they stop
    before their first step with an error that says what to set."""
    from types import SimpleNamespace

    from modules import ModelConfig, OracleTriggerFinder, SuspiciousPairDiscovery

    class CPUDeepSpeedStrategy:  # stands in for the strategy the message names
        pass

    tiny = ModelConfig(name="configs/models/tiny-rn32.json")
    module = SuspiciousPairDiscovery(tiny, score="weak", overfit=False) if stage == "discovery" else OracleTriggerFinder(tiny)
    module._trainer = SimpleNamespace(world_size=2, strategy=CPUDeepSpeedStrategy())
    with pytest.raises(ValueError, match="trainer.devices 1.*") as refused:
        module.score_pairs() if stage == "discovery" else module.on_train_start()
    assert "2 ranks under CPUDeepSpeedStrategy" in str(refused.value)
