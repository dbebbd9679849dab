"""EDA text augmentation (Wei & Zou, 2019) as CleanCLIP uses it for the text-text term.

Operations: synonym replacement and random insertion (both need WordNet), random swap, random
deletion. WordNet is read through NLTK when both are installed (`pip install nltk` and Debian's
`wordnet` package, or `nltk.download("wordnet")`); without it the two synonym operations are
skipped and a warning is logged once. Every call takes its own `random.Random`, so a seeded caller
gets the same augmentation back.
"""

from __future__ import annotations

import logging
import random
from functools import lru_cache

log = logging.getLogger(__name__)

STOP_WORDS = frozenset(
    "a an the of on in at to and or is are with for by from this that there its it be as".split()
)


@lru_cache(maxsize=1)
def _wordnet():
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("dog")
        return wordnet
    except (ImportError, LookupError, OSError):
        log.warning("WordNet is not available: EDA uses only random swap and deletion")
        return None


def synonyms(word: str) -> list[str]:
    wn = _wordnet()
    if wn is None:
        return []
    names = {lemma.name().replace("_", " ").lower() for syn in wn.synsets(word) for lemma in syn.lemmas()}
    names.discard(word.lower())
    return sorted(names)


def synonym_replacement(words: list[str], n: int, rng: random.Random) -> list[str]:
    out = list(words)
    candidates = [i for i, w in enumerate(out) if w.lower() not in STOP_WORDS]
    rng.shuffle(candidates)
    replaced = 0
    for i in candidates:
        options = synonyms(out[i])
        if options:
            out[i] = rng.choice(options)
            replaced += 1
        if replaced >= n:
            break
    return out


def random_insertion(words: list[str], n: int, rng: random.Random) -> list[str]:
    out = list(words)
    for _ in range(n):
        options = synonyms(rng.choice(words)) if words else []
        if options:
            out.insert(rng.randint(0, len(out)), rng.choice(options))
    return out


def random_swap(words: list[str], n: int, rng: random.Random) -> list[str]:
    out = list(words)
    if len(out) < 2:
        return out
    for _ in range(n):
        i, j = rng.sample(range(len(out)), 2)
        out[i], out[j] = out[j], out[i]
    return out


def random_deletion(words: list[str], p: float, rng: random.Random) -> list[str]:
    if len(words) <= 1:
        return list(words)
    kept = [w for w in words if rng.random() > p]
    return kept or [rng.choice(words)]


def eda(caption: str, rng: random.Random, alpha: float = 0.1) -> str:
    """One EDA operation, chosen at random, changing about `alpha` of the words; never empty."""
    words = caption.split()
    if not words:
        return caption
    n = max(1, round(alpha * len(words)))
    ops = ["swap", "delete"] + (["synonym", "insert"] if _wordnet() is not None else [])
    op = rng.choice(ops)
    if op == "synonym":
        out = synonym_replacement(words, n, rng)
    elif op == "insert":
        out = random_insertion(words, n, rng)
    elif op == "swap":
        out = random_swap(words, n, rng)
    else:
        out = random_deletion(words, alpha, rng)
    return " ".join(out) or caption
