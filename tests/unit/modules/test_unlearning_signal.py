"""The adaptive stage 2's signal, guard and decisions (modules/cleaning/unlearning_signal.py) on hand-made
embeddings and traces: collapsed against spread features, own-caption accuracy, when it stops (signal,
guard, cap) or strengthens λ_forget, and the learning-rate schedule that restarts every round."""

from __future__ import annotations

import pytest
import torch

from modules.cleaning.unlearning_signal import (
    AdaptiveState,
    AdaptiveUnlearning,
    collapse_gap,
    holdout_rows,
    mean_pairwise_cosine,
    pair_accuracy,
    relative_match,
)
from modules.core.base import WarmupCosine


def test_collapsed_features_have_cosine_one_spread_ones_zero_and_the_gap_is_their_difference():
    collapsed = torch.tensor([[1.0, 0.0, 0.0]]).repeat(5, 1) + 1e-4 * torch.randn(5, 3)
    spread = torch.eye(4)
    assert mean_pairwise_cosine(collapsed) == pytest.approx(1.0, abs=1e-3)
    assert mean_pairwise_cosine(spread) == pytest.approx(0.0, abs=1e-6)
    assert collapse_gap(collapsed, spread) == pytest.approx(1.0, abs=1e-3)
    assert collapse_gap(spread, spread) == pytest.approx(0.0, abs=1e-6)


def test_pair_accuracy_counts_images_whose_own_caption_scores_best():
    images = torch.eye(4)
    assert pair_accuracy(images, images) == 1.0
    assert pair_accuracy(images, images[[1, 0, 2, 3]]) == 0.5  # two images now prefer another's caption


def test_relative_match_is_one_for_matched_pairs_and_zero_for_unrelated_ones():
    clean = torch.eye(4) * 0.9 + 0.1  # matched 1.0, mismatched 0.1
    assert relative_match(torch.full((3,), 1.0), clean) == pytest.approx(1.0)
    assert relative_match(torch.full((3,), 0.1), clean) == pytest.approx(0.0, abs=1e-6)
    assert relative_match(torch.tensor([1.0, 0.1]), clean) == pytest.approx(0.5)


def test_a_quarter_of_the_suspicious_set_is_held_out_and_never_trained_on():
    trained, held = holdout_rows(200, AdaptiveUnlearning(), seed=0)
    assert len(held) == 50 and len(trained) == 150 and not set(held.tolist()) & set(trained.tolist())
    assert torch.equal(holdout_rows(200, AdaptiveUnlearning(), seed=0)[1], held)  # seeded
    assert len(holdout_rows(3, AdaptiveUnlearning(), seed=0)[1]) == 2  # at least 2, at most all but one


def _state(**settings) -> AdaptiveState:
    return AdaptiveState(AdaptiveUnlearning(**settings), lambda_forget=1.0)


def test_it_stops_after_a_round_whose_held_out_pairs_no_longer_match_and_says_so():
    state = _state(tolerance=0.2)
    state.start(0, 1.10, 0.90)
    state.start(5, 0.30, 0.10)  # a resumed run keeps its first start
    assert state.end_round(78, 0.50, 0.90) is None
    assert state.end_round(156, 0.15, 0.89) == "signal"
    summary = state.summary()
    assert summary["stopped"] == "signal" and summary["rounds"] == 2 and summary["start_relative_match"] == 1.10
    assert summary["end_relative_match"] == 0.15 and not summary["proxy_fell"]
    assert [(t["round"], t["step"]) for t in summary["trace"]] == [(0, 0), (1, 78), (2, 156)]


def test_the_guard_stops_it_when_the_ca_proxy_falls_and_the_cap_after_the_last_round():
    guarded = _state(guard_drop=0.05)
    guarded.start(0, 0.6, 0.90)
    assert guarded.end_round(10, 0.5, 0.86) is None  # within the allowed drop
    assert guarded.end_round(20, 0.4, 0.84) == "guard"
    signal_first = _state(guard_drop=0.05)
    signal_first.start(0, 0.6, 0.90)
    assert signal_first.end_round(10, 0.1, 0.50) == "signal"  # both at once: the backdoor is gone,
    assert signal_first.summary()["proxy_fell"] and guarded.summary()["proxy_fell"]  # and the cost is said
    capped = _state()
    capped.start(0, 0.6, 0.9)
    assert capped.end_round(10, 0.5, 0.9, last=False) is None
    assert capped.end_round(20, 0.4, 0.9, last=True) == "cap" and capped.summary()["stopped"] == "cap"
    assert _state().summary()["stopped"] == "end of training"  # never checked: it ran the fit's length


def test_lambda_grows_after_a_round_that_does_not_halve_the_signal_up_to_its_bound():
    state = _state(grow=2.0, min_progress=0.5, max_lambda=4.0)
    state.start(0, 0.80, 0.9)
    state.end_round(10, 0.30, 0.9)  # removed 62%: enough
    assert state.lambda_forget == 1.0
    state.end_round(20, 0.25, 0.9)  # removed 17%: too little
    assert state.lambda_forget == 2.0 and state.trace[-1]["lambda_forget"] == 1.0  # the round ran at the old λ
    state.end_round(30, 0.25, 0.9)
    state.end_round(40, 0.25, 0.9)
    assert state.lambda_forget == 4.0  # the bound
    restored = _state(grow=2.0, min_progress=0.5, max_lambda=4.0)
    restored.load_state_dict(state.state_dict())  # a resumed run goes on from the checkpoint's state
    assert restored.summary() == state.summary() and restored.rounds == 4


def test_a_cyclic_schedule_warms_up_and_decays_to_zero_within_every_round():
    factor = WarmupCosine(warmup=2, floor=0.0)
    factor.cycle = 10
    first = [factor(step) for step in range(10)]
    assert [factor(step) for step in range(10, 20)] == first  # the second round repeats the first
    assert first[0] == 0.5 and first[1] == 1.0 and first[-1] < 0.05  # warm-up, peak, near zero at its end
    factor.cycle = None
    factor.total = 20
    assert factor(10) > 0.4  # one schedule over the fit: mid-decay at step 10


def test_bad_settings_are_refused_naming_the_option():
    with pytest.raises(ValueError, match="model.adaptive"):
        AdaptiveUnlearning(reference_pairs=1)
    with pytest.raises(ValueError, match="model.adaptive"):
        AdaptiveUnlearning(grow=0.5)


def test_a_round_is_one_epoch_of_optimizer_steps_whatever_the_step_cap():
    from types import SimpleNamespace

    from modules.cleaning.unlearning_signal import steps_per_epoch

    def trainer(batches, accumulate=1, estimated=100, max_epochs=4):
        return SimpleNamespace(num_training_batches=batches, accumulate_grad_batches=accumulate,
                               estimated_stepping_batches=estimated, max_epochs=max_epochs)
    assert steps_per_epoch(trainer(78, estimated=5)) == 78  # a max_steps of 5 does not shorten the round
    assert steps_per_epoch(trainer(78, accumulate=2)) == 39
    assert steps_per_epoch(trainer(float("inf"), estimated=312, max_epochs=4)) == 78
