"""The segmentation-oracle trigger finder: on hand-made images with a pasted patch, it returns the patch's
region and the planted label; clean images are not candidates; the victim label is the one whose region,
pasted onto other images, collapses their embeddings most (or turns the most of them into it, or, by the
count rule, is the most frequent)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from datamodules.transforms import denormalise, normalise_pixels
from modules.core.model_loading import ModelConfig
from modules.detection.oracle_finder import OracleTriggerFinder
from modules.detection.segmentation import FastSAM, Felzenszwalb
from modules.detection.victim import (
    best_regions,
    judge_image,
    rank_victim_samples,
    transplant_collapse,
    transplant_rate,
    victim_by_collapse,
    victim_by_transplant,
    victim_label,
    victim_set,
)

PATCH = (slice(20, 28), slice(4, 12))


def _scene(color: tuple[float, float, float], patched: bool) -> torch.Tensor:
    pixels = torch.tensor(color).view(3, 1, 1).expand(3, 32, 32).clone()
    pixels[:, 8:20, 14:26] = 0.5  # a grey object
    if patched:
        pixels[:, PATCH[0], PATCH[1]] = torch.tensor([1.0, 1.0, 0.0]).view(3, 1, 1)  # a yellow square
    return pixels


def _toy(spec):
    """Class 2 (the victim) when a yellow area is present anywhere; else red → 0, blue → 1."""
    def encode(images):
        pixels = denormalise(images, spec.mean, spec.std)
        yellow = ((pixels[:, 0] > 0.9) & (pixels[:, 1] > 0.9) & (pixels[:, 2] < 0.1)).float().sum((1, 2)) > 8
        red = pixels[:, 0].mean((1, 2)) > pixels[:, 2].mean((1, 2))
        index = torch.where(yellow, 2, torch.where(red, 0, 1))
        return F.one_hot(index, 3).float()
    return encode


def test_the_finder_returns_the_patch_region_and_the_planted_label():
    finder = OracleTriggerFinder(ModelConfig(name="configs/models/tiny-rn32.json"), oracle=Felzenszwalb(scale=100, sigma=0.0))
    spec = finder.input_spec()
    finder.encode_image = _toy(spec)
    scenes = [_scene((0.9, 0.1, 0.1), True), _scene((0.1, 0.1, 0.9), True), _scene((0.9, 0.1, 0.1), False),
              _scene((0.1, 0.1, 0.9), False)]
    found = finder.examine(normalise_pixels(torch.stack(scenes), spec.mean, spec.std), torch.eye(3))
    assert [f["whole"] for f in found] == [2, 2, 0, 1]
    assert [f["candidate"] for f in found] == [True, True, False, False]
    truth = torch.zeros(32, 32, dtype=torch.bool)
    truth[PATCH] = True
    for f in found[:2]:
        iou = (f["region"] & truth).sum() / (f["region"] | truth).sum()
        assert iou > 0.9
    assert victim_label({f"k{i}": f["whole"] for i, f in enumerate(found) if f["candidate"]}) == (2, 1.0)


def test_a_label_a_large_region_grounds_is_not_a_trigger():
    # the whole image says 1; a large region (40%) says 1 too: an object, not a trigger
    assert judge_image(1, [0, 1, 1], [0.9, 0.8, 0.7], [0.5, 0.4, 0.05], 0.15) == (False, 0.0, -1)
    assert judge_image(1, [0, 0, 1], [0.9, 0.8, 0.7], [0.5, 0.4, 0.05], 0.15) == (True, 0.7, 2)
    assert judge_image(1, [0, 0, 2], [0.9, 0.8, 0.7], [0.5, 0.4, 0.05], 0.15)[0] is False


def test_victim_label_by_count_with_its_share():
    assert victim_label({"a": 3, "b": 3, "c": 1, "d": 3}) == (3, 0.75)
    assert victim_label({}) == (-1, 0.0)


def test_a_missing_fastsam_weight_file_names_the_option(tmp_path):
    with pytest.raises(ValueError, match="oracle.init_args.weights"):
        FastSAM(weights=str(tmp_path / "FastSAM-s.pt"))


def test_the_transplant_test_picks_the_region_that_turns_other_images_not_the_most_frequent_label():
    spec = OracleTriggerFinder(ModelConfig(name="configs/models/tiny-rn32.json")).input_spec()
    toy = _toy(spec)

    def classify(pixels):
        return toy(normalise_pixels(pixels, spec.mean, spec.std)).argmax(1)

    images = torch.stack([_scene((0.9, 0.1, 0.1), False), _scene((0.1, 0.1, 0.9), False),
                          _scene((0.9, 0.1, 0.1), True)])  # red → 0, blue → 1, patched → 2
    trigger = torch.zeros(32, 32, dtype=torch.bool)
    trigger[PATCH] = True
    yellow = _scene((0.9, 0.1, 0.1), True)
    before = classify(images)
    assert transplant_rate(trigger, yellow, images, before, 2, classify) == 1.0  # both unpatched images turn; the third is 2
    blue_corner = torch.zeros(32, 32, dtype=torch.bool)
    blue_corner[:4, :4] = True  # a small blue region: not enough to outweigh a red image
    assert transplant_rate(blue_corner, _scene((0.1, 0.1, 0.9), False), images, before, 1, classify) == 0.0
    everything_two = torch.stack([_scene((0.9, 0.1, 0.1), True)])
    assert transplant_rate(trigger, yellow, everything_two, classify(everything_two), 2, classify) == 0.0  # nothing left to turn

    # label 1 has the most candidates, but only label 2's region works on other images
    candidates = {"a": 1, "b": 1, "c": 1, "d": 2}
    scores = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.5}
    rates = {"a": 0.1, "b": 0.3, "c": 0.0, "d": 0.95}
    tried = []

    def rate_of(key, label):
        tried.append(key)
        return rates[key]

    best = best_regions(candidates, scores, rate_of, top=2)
    assert best == {1: (0.3, "b"), 2: (0.95, "d")}
    assert sorted(tried) == ["a", "b", "d"]  # "c" is below label 1's top 2 by score
    assert victim_by_transplant(candidates, best) == (2, "d")
    assert victim_label(candidates)[0] == 1  # the count rule would name label 1
    assert victim_by_transplant({}, {}) == (-1, None)


def test_a_trigger_collapses_the_images_it_is_pasted_on_a_region_that_adds_a_feature_does_not():
    spec = OracleTriggerFinder(ModelConfig(name="configs/models/tiny-rn32.json")).input_spec()
    toy = _toy(spec)

    def embed(pixels):
        return toy(normalise_pixels(pixels, spec.mean, spec.std))

    images = torch.stack([_scene((0.9, 0.1, 0.1), False), _scene((0.1, 0.1, 0.9), False)] * 2)  # red, blue, red, blue
    before = embed(images).argmax(1)
    trigger = torch.zeros(32, 32, dtype=torch.bool)
    trigger[PATCH] = True
    yellow = _scene((0.9, 0.1, 0.1), True)
    assert transplant_collapse(trigger, yellow, images, before, 2, embed) == pytest.approx(1.0)  # all one point
    blue_corner = torch.zeros(32, 32, dtype=torch.bool)
    blue_corner[:4, :4] = True  # changes no image's embedding: two red, two blue
    assert transplant_collapse(blue_corner, _scene((0.1, 0.1, 0.9), False), images, before, 2, embed) == pytest.approx(1 / 3)
    assert transplant_collapse(trigger, yellow, images[:2], torch.tensor([0, 2]), 2, embed) == 0.0  # one image left


def test_the_collapse_rule_names_the_label_whose_region_collapses_most_not_the_one_that_turns_most():
    best = {1: (0.95, "texture"), 2: (0.92, "patch"), 3: (0.3, "object")}
    collapse = {"texture": 0.70, "patch": 0.83, "object": 0.50}
    victim, key, by_label = victim_by_collapse(best, lambda key, label: collapse[key])
    assert (victim, key, by_label) == (2, "patch", {1: 0.70, 2: 0.83, 3: 0.50})
    assert victim_by_transplant({"texture": 1, "patch": 2, "object": 3}, best) == (1, "texture")
    assert victim_by_collapse({}, lambda key, label: 0.0) == (-1, None, {})


def test_victim_samples_rank_by_their_own_regions_transplant_rate_and_only_those_that_turn_are_handed_over():
    # "small": a clean image of the victim class with a small object (a high score, its object turns
    # nothing); "p1", "p2": triggered images (lower scores, their regions turn most images)
    scores = {"small": 0.9, "p1": 0.4, "p2": 0.5, "half": 0.3}
    rates = {"small": 0.1, "p1": 1.0, "p2": 1.0, "half": 0.5}
    ranked = rank_victim_samples(scores, rates)
    assert ranked == ["p2", "p1", "half", "small"]  # equal rates: the better score first
    assert victim_set(ranked, rates, 0.5, 200) == ["p2", "p1", "half"]
    assert victim_set(ranked, rates, 0.5, 2) == ["p2", "p1"]
    assert rank_victim_samples(scores, {}) == ["small", "p2", "p1", "half"]  # no rates measured: by score
    assert victim_set(["small", "p2"], {}, 0.5, 200) == ["small", "p2"]


def test_the_victim_set_for_unlearning_holds_exactly_the_best_ranked_victim_samples(tmp_path):
    from modules.detection.pair_scoring import SUSPICIOUS_PAIRS, load_suspicious_pairs
    from modules.detection.victim import write_victim_set

    data = {f"{i:09d}": (torch.full((3, 8, 8), i, dtype=torch.uint8), f"caption {i}") for i in range(50)}
    asked = []

    def fetch(keys):  # a data pass yields more pairs than asked for; only the asked ones may be written
        asked.append(list(keys))
        return dict(data)

    ranked = ["000000007", "000000003", "000000042", "000000011"]
    assert write_victim_set(tmp_path, ranked, 3, fetch) == ranked[:3]
    assert asked == [ranked[:3]]
    keys, images, captions = load_suspicious_pairs(tmp_path / SUSPICIOUS_PAIRS, 200)
    assert keys == ranked[:3] and captions == ["caption 7", "caption 3", "caption 42"]
    assert images[:, 0, 0, 0].tolist() == [7, 3, 42]
    with pytest.raises(AssertionError, match="did not yield"):
        write_victim_set(tmp_path, ["not-in-the-data"], 3, fetch)
