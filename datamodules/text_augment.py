"""EDA text augmentation (Wei & Zou, 2019) as CleanCLIP uses it for the text-text term.

Operations: synonym replacement, random insertion, random swap, random deletion. Synonyms come from
WordNet read through NLTK (`pip install nltk`): NLTK's own `wordnet` corpus if downloaded, otherwise
Debian's database (`apt-get install wordnet-base`, files in /usr/share/wordnet). With `use_synonyms=False`
synonym replacement is never chosen and insertion repeats a word of the caption: a different recipe,
chosen by config (`data.init_args.text_synonyms: none`), never by what the machine happens to have;
asking for synonyms where WordNet is missing is an error. Every call takes its own `random.Random`,
so a seeded caller gets the same augmentation back.
"""

from __future__ import annotations

import os
import random
import shutil
from functools import lru_cache
from pathlib import Path

STOP_WORDS = frozenset(
    "a an the of on in at to and or is are with for by from this that there its it be as".split()
)


DEBIAN_WORDNET = Path("/usr/share/wordnet")
WORDNET_MISSING = (
    "data.init_args.text_synonyms is 'wordnet' (CleanCLIP's EDA draws synonyms from WordNet) but WordNet is not "
    "available here: apt-get install wordnet-base wordnet-sense-index (or NLTK's wordnet corpus), or set "
    "data.init_args.text_synonyms: none to run EDA without synonyms, a different recipe")

# WordNet 3.0's list of lexicographer files. NLTK's reader needs it as a file named `lexnames`, which
# Debian's wordnet-base does not ship (it documents it in lexnames(5WN)).
_LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl"
).split()
_SYNTACTIC_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def _replace_atomically(target: Path, write) -> None:
    """Writes `target` through a file beside it, so that another process never opens it half written."""
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    write(partial)
    os.replace(partial, target)


def _debian_wordnet_dir() -> Path:
    """An NLTK data folder (`corpora/wordnet/`) holding copies of Debian's database files (NLTK refuses
    symlinks that leave a corpus root) plus a `lexnames` file. Several processes may build it at once."""
    data_root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "clip-backdoor-toolkit" / "nltk_data"
    cache = data_root / "corpora" / "wordnet"
    cache.mkdir(parents=True, exist_ok=True)
    for source in DEBIAN_WORDNET.iterdir():
        target = cache / source.name
        if source.is_file() and not target.exists():
            _replace_atomically(target, lambda path, source=source: shutil.copyfile(source, path))
    lines = [f"{i:02d}\t{name}\t{_SYNTACTIC_CATEGORY[name.split('.')[0]]}" for i, name in enumerate(_LEXNAMES)]
    lexnames = "\n".join(lines) + "\n"
    target = cache / "lexnames"
    if not target.exists() or target.read_text() != lexnames:
        _replace_atomically(target, lambda path: path.write_text(lexnames))
    return data_root


@lru_cache(maxsize=1)
def _wordnet():
    try:
        import nltk
    except ImportError:
        return None
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("dog")
        return wordnet
    except (LookupError, OSError):
        pass
    if (DEBIAN_WORDNET / "data.noun").exists():
        nltk.data.path.append(str(_debian_wordnet_dir()))
        from nltk.corpus import wordnet

        wordnet.synsets("dog")
        return wordnet
    return None


def _reopen_data_files_in_child() -> None:
    # NLTK's WordNet reader keeps its data files open and seeks in them per lookup. DataLoader workers
    # forked after the main process used it (it checks WordNet at setup) would share those files' offsets,
    # so concurrent lookups read at each other's positions and NLTK returns None for the synsets it missed.
    # The child keeps the reader's index (seconds to load, and workers are forked each epoch) and opens
    # the data files again, lazily, as NLTK's reader does on first use.
    if _wordnet.cache_info().currsize and (reader := _wordnet()) is not None:
        reader._data_file_map = {}


os.register_at_fork(after_in_child=_reopen_data_files_in_child)


def wordnet_available() -> bool:
    return _wordnet() is not None


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


def random_insertion(words: list[str], n: int, rng: random.Random, use_synonyms: bool = True) -> list[str]:
    """Insert a synonym of a random word at a random place (the word itself without synonyms)."""
    out = list(words)
    for _ in range(n):
        word = rng.choice(words)
        options = synonyms(word) if use_synonyms else [word]
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


def eda(caption: str, rng: random.Random, alpha: float = 0.1, use_synonyms: bool = True) -> str:
    """One EDA operation, chosen at random, changing about `alpha` of the words; never empty."""
    if use_synonyms and not wordnet_available():
        raise ValueError(WORDNET_MISSING)
    words = caption.split()
    if not words:
        return caption
    n = max(1, round(alpha * len(words)))
    ops = ["swap", "delete", "insert"] + (["synonym"] if use_synonyms else [])
    op = rng.choice(ops)
    if op == "synonym":
        out = synonym_replacement(words, n, rng)
    elif op == "insert":
        out = random_insertion(words, n, rng, use_synonyms)
    elif op == "swap":
        out = random_swap(words, n, rng)
    else:
        out = random_deletion(words, alpha, rng)
    return " ".join(out) or caption
