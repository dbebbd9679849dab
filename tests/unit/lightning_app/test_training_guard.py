"""A diverged fit stops before its optimizer steps on a non-finite loss and leaves no checkpoint or summary;
a preemption signal leaves a step checkpoint and a non-zero exit (the resume itself: tests/test_resume.py).

The fits of these tests: tests/integration/test_training_guard_fit.py."""

from __future__ import annotations

import signal
from types import SimpleNamespace

import pytest
import torch

from lightning_app.checkpointing import NonFiniteWeightsError, refuse_nonfinite_weights
from lightning_app.training_guard import NonFiniteLossError, Preempted, TrainingGuard


def _trainer(step: int = 7) -> SimpleNamespace:
    progress = SimpleNamespace(current=SimpleNamespace(processed=3))
    return SimpleNamespace(world_size=1, global_step=step, current_epoch=1, checkpoint_callbacks=[],
                           strategy=SimpleNamespace(root_device=torch.device("cpu"), launcher=None),
                           fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(batch_progress=progress)))


def _zero3_partitioned(values: list[float], rank: int, partition: list[float]) -> torch.nn.Parameter:
    """A parameter as ZeRO-3 leaves it on `rank`: an empty `.data` and a padded partition `ds_tensor`."""
    parameter = torch.nn.Parameter(torch.empty(0))
    parameter.ds_numel, parameter.ds_zero_partition_rank = len(values), rank
    parameter.ds_tensor = torch.tensor(partition)
    parameter.ds_tensor.ds_numel = len(partition)
    return parameter


def test_a_nonfinite_loss_stops_before_the_backward_pass_naming_the_step():
    guard = TrainingGuard()
    guard.on_before_backward(_trainer(), None, torch.tensor(2.5))  # finite: nothing happens
    for bad in (float("nan"), float("inf")):
        with pytest.raises(NonFiniteLossError, match="not finite at step 7 .epoch 1, batch 3"):
            guard.on_before_backward(_trainer(), None, torch.tensor(bad))


def test_nonfinite_weights_are_refused_naming_the_parameter():
    module = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    refuse_nonfinite_weights(_trainer(), module, "checkpoint X")  # finite: nothing happens
    with torch.no_grad():
        module[1].bias[0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"step 7: 1\.bias; the run diverged and checkpoint X"):
        refuse_nonfinite_weights(_trainer(), module, "checkpoint X")


def test_zero3_partition_padding_is_not_judged_but_the_owned_values_are():
    nan = float("nan")
    module = torch.nn.Module()
    # 5 values over 2 ranks in partitions of 3: rank 1 owns 2 values and 1 uninitialized padding slot
    module.weight = _zero3_partitioned([1, 2, 3, 4, 5], rank=1, partition=[4.0, 5.0, nan])
    refuse_nonfinite_weights(_trainer(), module, "checkpoint X")  # the NaN is padding: nothing happens
    module.weight = _zero3_partitioned([1, 2, 3], rank=3, partition=[nan])  # 4 ranks: rank 3 owns nothing
    refuse_nonfinite_weights(_trainer(), module, "checkpoint X")
    module.weight = _zero3_partitioned([1, 2, 3, 4, 5], rank=1, partition=[4.0, nan, 0.0])
    with pytest.raises(NonFiniteWeightsError, match="weight"):
        refuse_nonfinite_weights(_trainer(), module, "checkpoint X")


def test_a_preemption_signal_stops_at_the_next_batch_end_with_128_plus_the_signal():
    guard = TrainingGuard()
    trainer = _trainer()
    guard.on_before_backward(trainer, None, torch.tensor(1.0))
    guard.on_train_batch_end(trainer, None, None, None, 0)  # no signal: the fit goes on
    guard._on_signal(signal.SIGUSR1, None)
    guard.on_before_backward(trainer, None, torch.tensor(1.0))  # the ranks agree on it here
    with pytest.raises(Preempted) as stopped:
        guard.on_train_batch_end(trainer, None, None, None, 0)
    assert stopped.value.code == 128 + signal.SIGUSR1


def test_a_signal_between_epochs_stops_at_the_next_epoch_start():
    guard = TrainingGuard()
    guard._on_signal(signal.SIGTERM, None)
    with pytest.raises(Preempted) as stopped:
        guard.on_train_epoch_start(_trainer(), None)
    assert stopped.value.code == 128 + signal.SIGTERM
