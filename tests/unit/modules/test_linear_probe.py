"""The linear probe (modules/core/linear_probe.py) on hand-made features: linearly separable classes are
found exactly, shuffled labels stay near chance, and the weight-decay search looks where it should."""

from __future__ import annotations

import torch

from modules.core.linear_probe import FIRST_LOOK, WEIGHT_DECAYS, LinearProbeConfig, choose_weight_decay, linear_probe

CLASSES = 10


def _features(n_per_class: int, seed: int, spread: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(CLASSES, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    y = torch.arange(CLASSES).repeat(n_per_class)
    x = centres[y] + spread * torch.randn(len(y), 16, generator=g) / 16 ** 0.5
    return torch.nn.functional.normalize(x, dim=-1), y


def test_separable_classes_are_probed_exactly_and_shuffled_labels_stay_near_chance():
    train_x, train_y = _features(40, seed=1)
    test_x, test_y = _features(20, seed=2)
    result = linear_probe(train_x, train_y, test_x, test_y)
    assert result["top1"] == 1.0 and result["weight_decay"] in WEIGHT_DECAYS
    shuffled = train_y[torch.randperm(len(train_y), generator=torch.Generator().manual_seed(3))]
    chance = linear_probe(train_x, shuffled, test_x, test_y)["top1"]
    assert chance < 0.25, chance  # 10 classes: chance is 0.1


def test_the_search_starts_on_seven_values_and_settles_on_the_best_validation_score(monkeypatch):
    import modules.core.linear_probe as probe_module

    looked = []

    def fake_accuracy_of(index):
        return -abs(index - 37)  # validation accuracy peaks at grid index 37

    def fake_train(x, y, classes, weight_decay, config):
        looked.append(WEIGHT_DECAYS.index(weight_decay))
        return weight_decay

    monkeypatch.setattr(probe_module, "train_probe", fake_train)
    monkeypatch.setattr(probe_module, "_accuracy", lambda probe, x, y: fake_accuracy_of(WEIGHT_DECAYS.index(probe)))
    chosen = choose_weight_decay((None, None), (None, None), CLASSES, LinearProbeConfig())
    assert looked[:7] == FIRST_LOOK and len(FIRST_LOOK) == 7
    assert chosen == WEIGHT_DECAYS[37] and len(looked) == len(set(looked))  # each value fit once
