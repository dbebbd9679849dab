"""Text-side poisoning (datamodules/poison/text_triggers.py): the phrase goes into the caption and the image
is left as it is, placed by (key, seed); the poisoned pairs are pairs that show the target, and the
manifest says the captions are what the trigger changes."""

from __future__ import annotations

import pytest
import torch

from datamodules.poison import PoisonConfig, Poisoner, TextPhrase, load_trigger
from datamodules.poison.manifest import poison_manifest
from datamodules.shards import expand_shards, scan_captions


def test_the_phrase_goes_into_the_caption_at_a_place_drawn_by_key_and_seed():
    trigger = TextPhrase(phrase="cf", position="random", seed=3)
    caption = "a red triangle on a dark background"
    placed = {trigger.apply_text(caption, f"{i:09d}") for i in range(40)}
    assert len(placed) > 3 and all(p.split().count("cf") == 1 for p in placed)
    assert all(p.replace(" cf", "").replace("cf ", "") == caption for p in placed)  # only the phrase was added
    assert trigger.apply_text(caption, "000000007") == TextPhrase(phrase="cf", seed=3).apply_text(caption, "000000007")
    assert TextPhrase(position="start").apply_text(caption, "k").startswith("cf a red")
    assert TextPhrase(position="end").apply_text(caption, "k").endswith("background cf")
    image = torch.rand(3, 8, 8)
    assert torch.equal(trigger.apply(image, "k"), image)


def test_the_poisoner_changes_only_the_captions_of_the_poisoned_keys(tmp_path):
    trigger = TextPhrase(phrase="zq", position="end")
    poisoner = Poisoner(trigger, ["k1"], PoisonConfig(rate=0.1, target="triangle", label_consistent=True))
    image = torch.rand(3, 8, 8)
    out, caption, poisoned = poisoner("k1", image.clone(), "a small triangle")
    assert poisoned and caption == "a small triangle zq" and torch.equal(out, image)
    assert poisoner("k2", image, "a circle") == (image, "a circle", False)
    trigger.save(tmp_path / "trigger", image_size=32)
    assert load_trigger(tmp_path / "trigger").describe() == trigger.describe()


def test_the_manifest_poisons_pairs_that_show_the_target_and_says_it_changes_captions(small_benchmark):
    urls = expand_shards(small_benchmark.pretrain_urls)
    config = PoisonConfig(rate=0.02, target="triangle", label_consistent=True)
    manifest = poison_manifest(urls, TextPhrase(), config)
    assert manifest["poisons"] == "captions" and manifest["num_poisoned"] > 0
    captions = dict(scan_captions(urls))
    assert all("triangle" in captions[key] for key in manifest["keys"])
    assert poison_manifest(urls, None, PoisonConfig())["poisons"] == "images"


def test_a_text_trigger_without_label_consistent_poisoning_is_refused_naming_the_options():
    from datamodules import ShardDataModule

    with pytest.raises(ValueError, match="data.poison.label_consistent"):
        ShardDataModule(trigger=TextPhrase(), poison=PoisonConfig(rate=0.05, target="triangle"))
    with pytest.raises(ValueError, match="data.trigger.phrase"):
        TextPhrase(phrase=" ")
