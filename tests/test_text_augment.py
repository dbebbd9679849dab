import random

import pytest

from datamodules import text_augment
from datamodules.text_augment import eda, random_deletion, random_insertion, random_swap, synonym_replacement

CAPTIONS = ["a", "star", "a small red star on a dark background", "close-up of a blue heart", "  "]


@pytest.mark.parametrize("caption", CAPTIONS)
def test_eda_never_returns_an_empty_caption(caption):
    rng = random.Random(0)
    for _ in range(200):
        assert eda(caption, rng, alpha=0.5).strip() or not caption.strip()


def test_eda_is_seeded():
    caption = "a small red star on a dark background"
    first = [eda(caption, random.Random(7)) for _ in range(1)] + [eda(caption, random.Random(i)) for i in range(20)]
    again = [eda(caption, random.Random(7)) for _ in range(1)] + [eda(caption, random.Random(i)) for i in range(20)]
    assert first == again
    assert len(set(first)) > 3


def test_operations_do_what_they_say():
    words = "a small red star on a dark background".split()
    rng = random.Random(1)
    assert sorted(random_swap(words, 2, rng)) == sorted(words)
    deleted = random_deletion(words, 0.5, rng)
    assert 1 <= len(deleted) <= len(words) and all(w in words for w in deleted)
    assert random_deletion(["only"], 0.99, rng) == ["only"]
    assert len(random_insertion(words, 2, rng)) >= len(words)


def test_synonym_replacement_uses_wordnet_when_present():
    if text_augment._wordnet() is None:
        pytest.skip("WordNet is not installed here (apt-get install wordnet-base wordnet-sense-index)")
    out = synonym_replacement("a small red star".split(), 1, random.Random(0))
    assert out != "a small red star".split()
    assert "little" in text_augment.synonyms("small")


def test_without_wordnet_eda_falls_back_to_three_operations(monkeypatch):
    monkeypatch.setattr(text_augment, "_wordnet", lambda: None)
    caption = "a small red star on a dark background"
    outs = {eda(caption, random.Random(i), alpha=0.3) for i in range(50)}
    words = set(caption.split())
    assert all(set(o.split()) <= words for o in outs)  # nothing but the caption's own words
    assert len(outs) > 5
