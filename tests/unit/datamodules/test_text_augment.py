import multiprocessing
import os
import random
from pathlib import Path

import pytest

from datamodules import text_augment
from datamodules.text_augment import eda, random_deletion, random_insertion, random_swap, synonym_replacement

CAPTIONS = ["a", "star", "a small red star on a dark background", "close-up of a blue heart", "  "]


@pytest.mark.parametrize("caption", CAPTIONS)
def test_eda_never_returns_an_empty_caption(caption):
    rng = random.Random(0)
    for _ in range(200):
        assert eda(caption, rng, alpha=0.5, use_synonyms=False).strip() or not caption.strip()


def test_eda_is_seeded():
    caption = "a small red star on a dark background"
    with_synonyms = text_augment.wordnet_available()  # seeded either way
    first = [eda(caption, random.Random(i), use_synonyms=with_synonyms) for i in [7] + list(range(20))]
    again = [eda(caption, random.Random(i), use_synonyms=with_synonyms) for i in [7] + list(range(20))]
    assert first == again
    assert len(set(first)) > 3


def test_operations_do_what_they_say():
    words = "a small red star on a dark background".split()
    rng = random.Random(1)
    assert sorted(random_swap(words, 2, rng)) == sorted(words)
    deleted = random_deletion(words, 0.5, rng)
    assert 1 <= len(deleted) <= len(words) and all(w in words for w in deleted)
    assert random_deletion(["only"], 0.99, rng) == ["only"]
    assert len(random_insertion(words, 2, rng, use_synonyms=False)) == len(words) + 2


def test_synonym_replacement_uses_wordnet_when_present():
    if text_augment._wordnet() is None:
        pytest.skip("WordNet is not installed here (apt-get install wordnet-base wordnet-sense-index)")
    out = synonym_replacement("a small red star".split(), 1, random.Random(0))
    assert out != "a small red star".split()
    assert "little" in text_augment.synonyms("small")


def test_without_synonyms_eda_uses_three_operations_even_where_wordnet_is(monkeypatch):
    caption = "a small red star on a dark background"
    outs = {eda(caption, random.Random(i), alpha=0.3, use_synonyms=False) for i in range(50)}
    words = set(caption.split())
    assert all(set(o.split()) <= words for o in outs)  # nothing but the caption's own words
    assert len(outs) > 5


def test_synonyms_where_wordnet_is_missing_are_an_error_naming_the_option(monkeypatch):
    monkeypatch.setattr(text_augment, "_wordnet", lambda: None)
    with pytest.raises(ValueError, match="data.init_args.text_synonyms: none"):
        eda("a small red star", random.Random(0))


def test_a_fit_on_augmented_views_stops_before_training_when_its_synonyms_are_missing(small_benchmark, tmp_path,
                                                                                       monkeypatch):

    import torch

    from datamodules import ShardDataModule
    from datamodules.transforms import InputSpec, ModelNeeds

    spec = InputSpec(32, (0.5,) * 3, (0.5,) * 3, tokenizer=lambda texts: torch.zeros((len(texts), 4), dtype=torch.long))
    manifest = {"num_poisoned": 0, "keys": [], "caption_pools": {}}
    monkeypatch.setattr(text_augment, "_wordnet", lambda: None)

    def stream(text_synonyms: str, augmented_views: bool):
        data = ShardDataModule(train_shards=small_benchmark.pretrain_urls, run_dir=str(tmp_path), batch_size=8,
                               text_synonyms=text_synonyms)
        data.connect(ModelNeeds(spec, augmented_views=augmented_views))
        return data._build_stream(world=1, manifest=manifest)

    with pytest.raises(ValueError, match="data.init_args.text_synonyms is 'wordnet'"):
        stream("wordnet", augmented_views=True)
    assert stream("wordnet", augmented_views=False) is not None  # MMCL draws no EDA: nothing to miss
    assert "text_aug" in next(iter(stream("none", augmented_views=True).every_pair_once()))
    with pytest.raises(ValueError, match="'wordnet' or 'none'"):
        ShardDataModule(train_shards=small_benchmark.pretrain_urls, text_synonyms="nltk")


def _look_up_in_a_forked_worker(words: list[str]) -> None:
    failed = 0
    for word in words:
        try:
            text_augment.synonyms(word)
        except AttributeError:  # NLTK's None for a synset it read at the wrong place
            failed += 1
    os._exit(min(failed, 100))


def test_forked_workers_look_up_synonyms_at_once_after_the_main_process_did():
    # the DataLoader's way: the main process checks WordNet at setup, then forks workers that all draw EDA
    if not text_augment.wordnet_available():
        pytest.skip("WordNet is not installed here (apt-get install wordnet-base wordnet-sense-index)")
    index = Path(text_augment.DEBIAN_WORDNET / "index.noun")
    if not index.exists():
        pytest.skip("needs Debian's WordNet files for a list of words")
    words = [line.split()[0] for line in index.read_text().splitlines() if not line.startswith(" ")][2000:3500]
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_look_up_in_a_forked_worker, args=(words,)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert [worker.exitcode for worker in workers] == [0] * 4, "lookups that failed in each worker (at most 100)"
