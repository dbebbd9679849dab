import pytest
import torch
import torch.nn.functional as F

from modules.core.evaluation import AttackSuccessRate, zeroshot_classifier


def test_asr_excludes_target_class_images():
    target = 2
    # four triggered images: true labels 0, 1, 2, 3; predictions 2, 2, 2, 0
    logits = torch.tensor([
        [0.0, 0.0, 9.0, 0.0],
        [0.0, 0.0, 9.0, 0.0],
        [0.0, 0.0, 9.0, 0.0],  # a target-class image predicted as target: must not count
        [9.0, 0.0, 0.0, 0.0],
    ])
    labels = torch.tensor([0, 1, 2, 3])
    metric = AttackSuccessRate(target_index=target)
    metric.update(logits, labels)
    assert metric.total.item() == 3
    assert abs(metric.compute().item() - 2 / 3) < 1e-6


def test_asr_is_not_accuracy_against_true_labels():
    # predictions equal the true labels (clean behaviour): ASR is 0 whatever the accuracy
    logits = torch.eye(4) * 5
    metric = AttackSuccessRate(target_index=0)
    metric.update(logits, torch.arange(4))
    assert metric.compute().item() == 0.0


def test_asr_accumulates_over_batches():
    metric = AttackSuccessRate(target_index=1)
    metric.update(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    metric.update(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 1]))
    assert abs(metric.compute().item() - 2 / 3) < 1e-6


def test_zeroshot_classifier_is_normalised_mean_of_normalised_templates():
    table = {0: torch.tensor([3.0, 0.0]), 1: torch.tensor([0.0, 1.0]), 2: torch.tensor([1.0, 1.0])}

    def tokenizer(texts):
        return torch.tensor([[{"a x": 0, "b x": 1, "a y": 2, "b y": 2}[t]] for t in texts])

    def encode_text(tokens):
        return torch.stack([table[int(t)] for t in tokens[:, 0]])

    weights = zeroshot_classifier(encode_text, tokenizer, ["x", "y"], ["a {}", "b {}"], torch.device("cpu"))
    expected_x = F.normalize(F.normalize(table[0], dim=0) + F.normalize(table[1], dim=0), dim=0)
    assert torch.allclose(weights[:, 0], expected_x)
    assert torch.allclose(weights[:, 1], F.normalize(table[2], dim=0))


def test_cohesion_is_the_mean_pairwise_cosine_over_every_batch():
    from modules.core.evaluation import Cohesion
    from modules.detection.decree import mean_pairwise_similarity

    features = torch.randn(50, 8, generator=torch.Generator().manual_seed(0)) + 0.5
    metric = Cohesion()
    metric.update(features[:17])
    metric.update(features[17:])
    expected = mean_pairwise_similarity(torch.nn.functional.normalize(features, dim=-1))
    assert metric.compute().item() == pytest.approx(expected.item(), abs=1e-5)
    metric.reset()
    metric.update(torch.tensor([[2.0, 0.0], [3.0, 0.0], [1.0, 0.0]]))
    assert metric.compute().item() == pytest.approx(1.0)  # one point: collapsed
    metric.reset()
    metric.update(torch.eye(4))
    assert metric.compute().item() == pytest.approx(0.0)  # orthogonal: spread
