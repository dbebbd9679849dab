"""The learning claim, measured: a poisoned run's ASR is far above the clean control's (same recipe).

A strongly poisoned small case (30% of 3,000 pairs, a fixed 8x8 patch at a fixed corner; see
conftest.train_small) so it is reliable in a couple of minutes on 2 cores; the full-size embedded
recipe is measured by the demo and the attack sweep.
"""

import pytest
from conftest import train_small


@pytest.mark.slow
def test_poisoned_pretraining_learns_the_backdoor_and_the_clean_control_does_not(learning_benchmark, small_poisoned_run,
                                                                                    tmp_path):
    _, poisoned = small_poisoned_run
    clean = train_small(learning_benchmark, tmp_path / "clean", rate=0.0)
    assert poisoned["poison_count"] > 700 and clean["poison_count"] == 0
    print({"poisoned": (poisoned["asr"], poisoned["ca_top1"]), "clean": (clean["asr"], clean["ca_top1"])})
    assert poisoned["asr"] >= 0.3, poisoned
    assert clean["asr"] <= 0.15, clean
    assert poisoned["asr"] >= clean["asr"] + 0.25
    assert clean["ca_top1"] > 0.15  # the clean control learned something (chance: 0.1)
