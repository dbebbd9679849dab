"""The learning claim, measured: a poisoned run's ASR is far above the clean control's (same recipe).

A strongly poisoned small case (30% of 3,000 pairs poisoned with the shipped BadNet recipe; see
conftest.train_small), about 40 s a run on 2 cores; the full-size embedded recipe is measured by
experiments/attacks.yaml and experiments/defenses.yaml.

Spread measured by `python benchmarks/learning_spread.py --seeds 0 1 2 --threads 1 2` (6 pairs of runs;
2026-12-02): poisoned ASR 0.963-0.996, clean ASR 0.004-0.022, margin 0.959-0.989, clean CA 0.453-0.713.
The thresholds leave a wide margin: poisoned ASR ≥ 0.7 (0.26 below the lowest seen), clean ASR ≤ 0.15
(0.13 above the highest), margin ≥ 0.5, clean CA > 0.2 (chance is 0.1). The earlier recipe (target
star, template captions, a patch fixed in a corner) gave poisoned ASR 0.34 on one machine against a
threshold of 0.3: the embedded exploration had already shown that a star target and template
captions make the backdoor take unevenly (docs/archive/one-seed.md, badnet-exploration).
"""



def test_poisoned_pretraining_learns_the_backdoor_and_the_clean_control_does_not(small_poisoned_run, small_clean_run):
    _, poisoned = small_poisoned_run
    clean = small_clean_run
    assert poisoned["poison_count"] > 700 and clean["poison_count"] == 0
    print({"poisoned": (poisoned["asr"], poisoned["ca_top1"]), "clean": (clean["asr"], clean["ca_top1"])})
    assert poisoned["asr"] >= 0.7, poisoned
    assert clean["asr"] <= 0.15, clean
    assert poisoned["asr"] >= clean["asr"] + 0.5
    assert clean["ca_top1"] > 0.2  # the clean control learned something (chance: 0.1)


def test_the_backdoor_gathers_the_triggered_images_and_the_clean_control_does_not(small_poisoned_run, small_clean_run):
    """The collapse the `dense` ranking and the oracle finder rely on, as the eval records it."""
    _, poisoned = small_poisoned_run
    clean = small_clean_run
    cohesion = {name: (run["metrics"]["val/cohesion_triggered"], run["metrics"]["val/cohesion_clean"])
                for name, run in (("poisoned", poisoned), ("clean", clean))}
    print(cohesion)
    assert cohesion["poisoned"][0] >= cohesion["poisoned"][1] + 0.3
    assert cohesion["poisoned"][0] >= cohesion["clean"][0] + 0.3
