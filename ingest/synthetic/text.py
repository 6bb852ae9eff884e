"""Text normalization and the noise that turns a document's name into what a searcher types.

``normalize`` is the one definition of a "normalized title" (lowercase, accents and apostrophes removed,
other punctuation to spaces): the logging engine matches tokens of normalized text, and tests compare
queries with normalized titles.
"""

from __future__ import annotations

import functools
import random
import re
import unicodedata

from .config import QueryNoiseConfig
from .names import EXTRA_TERMS, OPTIONAL_TERMS

_NON_ALNUM = re.compile(r"[^0-9a-z]+")
_APOSTROPHES = re.compile(r"['\u2019`]")


@functools.lru_cache(maxsize=1 << 18)  # titles and words repeat a lot; this is the generator's hot path
def normalize(text: str) -> str:
    """Lowercase ASCII words separated by single spaces ("Kasie's Café" -> "kasies cafe")."""
    if not text.isascii():
        text = unicodedata.normalize("NFKD", text)
        text = "".join(ch for ch in text if not unicodedata.combining(ch))
    text = text.lower()
    text = _APOSTROPHES.sub("", text)
    return _NON_ALNUM.sub(" ", text).strip()


def tokenize(text: str) -> list[str]:
    return normalize(text).split()


# Phonetic-ish rewrites a searcher makes when spelling from memory ("kasies" -> "kacis").
_PHONETIC = (
    ("ie", "y"), ("y", "ie"), ("ck", "k"), ("c", "k"), ("k", "c"), ("ph", "f"), ("f", "ph"), ("ee", "i"),
    ("ou", "u"), ("s", "z"), ("z", "s"), ("si", "ci"), ("ci", "si"), ("ae", "e"), ("th", "t"), ("w", "v"),
    ("v", "w"), ("es", "is"), ("er", "a"), ("ll", "l"), ("tt", "t"), ("nn", "n"), ("mm", "m"), ("ss", "s"),
    ("l", "ll"), ("t", "tt"), ("i", "y"), ("j", "g"), ("qu", "kw"), ("x", "ks"),
)
_KEYBOARD = {
    "q": "wa", "w": "qes", "e": "wrd", "r": "etf", "t": "ryg", "y": "tuh", "u": "yij", "i": "uok", "o": "ipl",
    "p": "ol", "a": "qsz", "s": "adwx", "d": "sfec", "f": "dgrv", "g": "fhtb", "h": "gjyn", "j": "hkum",
    "k": "jli", "l": "ko", "z": "asx", "x": "zsc", "c": "xdv", "v": "cfb", "b": "vgn", "n": "bhm", "m": "nj",
}


def typo(word: str, rng: random.Random, p_phonetic: float) -> str:
    """One misspelling of ``word``: a phonetic rewrite, or a dropped, swapped or replaced character."""
    if len(word) < 3:
        return word
    if rng.random() < p_phonetic:
        rules = [(a, b) for a, b in _PHONETIC if a in word[1:]]  # keep the first letter: people usually do
        if rules:
            a, b = rules[rng.randrange(len(rules))]
            starts = [i for i in range(1, len(word)) if word.startswith(a, i)]
            i = starts[rng.randrange(len(starts))]
            return word[:i] + b + word[i + len(a):]
    i = rng.randrange(1, len(word))
    op = rng.randrange(3)
    if op == 0:  # drop
        return word[:i] + word[i + 1:]
    if op == 1 and i < len(word) - 1:  # swap with next
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    near = _KEYBOARD.get(word[i], "aeiou")
    return word[:i] + near[rng.randrange(len(near))] + word[i + 1:]


def noisy_query(
    title: str,
    doc_type: str,
    place_terms: frozenset[str],
    searcher_city: str,
    cfg: QueryNoiseConfig,
    rng: random.Random,
) -> str:
    """What a searcher types when looking for the document titled ``title``.

    ``place_terms`` are the normalized tokens of the document's city and region (optional in a query).
    """
    words = title.split()
    if not words:
        return ""
    lower = rng.random() < cfg.p_lowercase
    if lower:
        words = [normalize(w) or w.lower() for w in words]
        words = [w for w in words if w]
    if rng.random() < cfg.p_partial and len(words) >= 1:
        kind = rng.random()
        if doc_type == "person" and len(words) >= 2 and kind < 0.6:
            words = words[:1]  # first name only
        elif len(words) >= 3 and kind < 0.6:
            words = words[: rng.randrange(1, len(words))]  # leading words
        elif len(words[-1]) > 3:
            words = words[:-1] + [words[-1][: rng.randrange(2, len(words[-1]))]]  # typeahead prefix
    if rng.random() < cfg.p_drop_optional and len(words) >= 2:
        kept = [w for w in words if normalize(w) not in OPTIONAL_TERMS and normalize(w) not in place_terms]
        if kept and len(kept) < len(words):
            words = kept
    if rng.random() < cfg.p_misspell:
        n = 2 if rng.random() < cfg.p_second_typo else 1
        for _ in range(n):
            cand = [i for i, w in enumerate(words) if len(w) >= 4]
            if not cand:
                break
            i = cand[rng.randrange(len(cand))]
            words[i] = typo(words[i], rng, cfg.p_phonetic)
    if rng.random() < cfg.p_extra_term:
        extra = EXTRA_TERMS[rng.randrange(len(EXTRA_TERMS))]
        if rng.random() < 0.3 and searcher_city:
            extra = searcher_city
        words.append(extra.lower() if lower else extra)
    return " ".join(words)
