"""The hard embedded tier is harder: under the same tiny clean recipe (conftest.train_small, 3,000
pairs, 8 epochs) its clean CA, as a share of the way from chance to 1, is below the easy tier's.

Chance differs (1/80 against 1/10), so raw CA would be lower by construction; the comparison is on
(CA - chance) / (1 - chance). Measured once (2026-12-02): easy 0.45-0.71 CA over seeds and thread
counts (tests/test_learning.py), i.e. 0.39-0.68 of the way; the full-size tiers under the shipped
recipe: docs/results/objectives.md (objectives-pretraining).
"""

from conftest import train_small

from datamodules.embedded.benchmark import EmbeddedBenchmark


def test_the_hard_tier_leaves_the_same_recipe_further_from_saturation(small_clean_run, tmp_path):
    hard = EmbeddedBenchmark(root=str(tmp_path / "hard"), pretrain_shards=6, finetune_shards=1, samples_per_shard=500,
                             eval_per_class=5, difficulty="hard", retrieval_images=20,
                             sketch_per_class=1, probe_per_class=1)
    hard.prepare()
    hard_run = train_small(hard, tmp_path / "run", 0.0, "--data.init_args.poison.target", "red triangle")

    def above_chance(ca: float, classes: int) -> float:
        return (ca - 1 / classes) / (1 - 1 / classes)

    easy, difficult = above_chance(small_clean_run["ca_top1"], 10), above_chance(hard_run["ca_top1"], 80)
    print({"easy": (small_clean_run["ca_top1"], easy), "hard": (hard_run["ca_top1"], difficult)})
    assert difficult < easy - 0.1
    assert hard_run["ca_top1"] > 1 / 80  # it learned something
