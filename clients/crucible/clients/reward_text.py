"""Text-only terms of the paraphrase reward: repetition, English-likeness, length and copying of the original.

Pure functions of strings (no mesh, no models), shared by the reward (reward.py) and the evasion evaluation (evade_eval.py).
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Sequence
from typing import Protocol


class _LanguageSettings(Protocol):
    @property
    def language_stopword_share(self) -> float: ...


class _LengthSettings(Protocol):
    @property
    def length_ratio_min(self) -> float: ...

    @property
    def length_ratio_max(self) -> float: ...


_WORD = re.compile(r"\w+(?:['’]\w+)*")
_ASCII_WORD = re.compile(r"[A-Za-z]+(?:['’-][A-Za-z]+)*|[0-9][0-9.,:%-]*")
#: Common English function words (articles, pronouns, auxiliaries, prepositions, conjunctions): 30-50 % of the words of
#: ordinary English prose, near 0 % of other languages' prose and of keyword soup.
_STOPWORDS = frozenset(
    [
        "a",
        "about",
        "above",
        "after",
        "again",
        "against",
        "all",
        "am",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "be",
        "because",
        "been",
        "before",
        "being",
        "below",
        "between",
        "both",
        "but",
        "by",
        "can",
        "could",
        "did",
        "do",
        "does",
        "doing",
        "down",
        "during",
        "each",
        "few",
        "for",
        "from",
        "further",
        "had",
        "has",
        "have",
        "having",
        "he",
        "her",
        "here",
        "hers",
        "herself",
        "him",
        "himself",
        "his",
        "how",
        "i",
        "if",
        "in",
        "into",
        "is",
        "it",
        "its",
        "itself",
        "just",
        "me",
        "more",
        "most",
        "my",
        "myself",
        "no",
        "nor",
        "not",
        "now",
        "of",
        "off",
        "on",
        "once",
        "only",
        "or",
        "other",
        "our",
        "ours",
        "ourselves",
        "out",
        "over",
        "own",
        "same",
        "she",
        "should",
        "so",
        "some",
        "such",
        "than",
        "that",
        "the",
        "their",
        "theirs",
        "them",
        "themselves",
        "then",
        "there",
        "these",
        "they",
        "this",
        "those",
        "through",
        "to",
        "too",
        "under",
        "until",
        "up",
        "very",
        "was",
        "we",
        "were",
        "what",
        "when",
        "where",
        "which",
        "while",
        "who",
        "whom",
        "why",
        "will",
        "with",
        "would",
        "you",
        "your",
        "yours",
        "yourself",
        "yourselves",
        "also",
        "may",
        "might",
        "must",
        "shall",
        "upon",
        "onto",
    ]
)


def _distinct(words: Sequence[str], n: int) -> float | None:
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


def repetition_score(text: str) -> float:
    """Degeneracy in [0, 1]: 1 - mean distinct-2/3 word n-gram ratio, or zlib's verdict on long texts when larger.

    Ordinary prose has almost no repeated bigrams (score ~0); "word word word ..." scores ~0.9. Compression
    (compressed/raw bytes under ~0.4) catches loops the word split misses, e.g. one long repeated token.
    """
    words = [w.lower() for w in _WORD.findall(text)]
    ratios = [r for r in (_distinct(words, 2), _distinct(words, 3)) if r is not None]
    by_words = 1.0 - sum(ratios) / len(ratios) if ratios else 0.0
    raw = text.encode("utf-8")
    by_zlib = 0.0
    if len(raw) >= 64:  # shorter texts do not compress (header overhead), so the ratio says nothing
        ratio = len(zlib.compress(raw, 9)) / len(raw)
        by_zlib = min(1.0, max(0.0, (0.4 - ratio) / 0.3))
    return max(by_words, by_zlib)


def english_likeness(text: str, config: _LanguageSettings) -> float:
    """In [0, 1]: share of word tokens that are ASCII words or numbers, times min(1, stopword share / target).

    The stopword share is smoothed towards 1/4 by 4 pseudo-words, so a terse but English sentence is not judged on
    a handful of words alone.
    """
    tokens = text.split()
    if not tokens:
        return 0.0
    ascii_share = sum(1 for t in tokens if _ASCII_WORD.fullmatch(t.strip(".,;:!?\"'()[]{}“”‘’«»…-—–"))) / len(tokens)
    words = [w.lower() for w in _WORD.findall(text)]
    stop_share = (sum(1 for w in words if w in _STOPWORDS) + 1) / (len(words) + 4)
    return ascii_share * min(1.0, stop_share / config.language_stopword_share)


def language_score(original: str, completion: str, config: _LanguageSettings) -> float:
    """The rewrite's English-likeness relative to the original's, in [0, 1]; 1 (unchecked) for a non-English original."""
    reference = english_likeness(original, config)
    if reference < 0.5:
        return 1.0
    return min(1.0, english_likeness(completion, config) / reference)


def length_score(original: str, completion: str, config: _LengthSettings) -> float:
    """1 while the word-count ratio is within the bounds; linear in log-ratio down to 0 at half the min / twice the max."""
    ratio = max(1, len(completion.split())) / max(1, len(original.split()))
    if ratio < config.length_ratio_min:
        return max(0.0, 1.0 - math.log(config.length_ratio_min / ratio) / math.log(2.0))
    if ratio > config.length_ratio_max:
        return max(0.0, 1.0 - math.log(ratio / config.length_ratio_max) / math.log(2.0))
    return 1.0


def copy_score(original: str, completion: str, n: int = 3) -> float:
    """Share of the rewrite's word n-grams that occur in the original, in [0, 1] (n-gram containment).

    A verbatim copy scores 1, a copy with a word or two changed ~0.8, a real paraphrase of a news sentence ~0.1-0.4.
    Texts shorter than n words fall back to unigrams. Lower-cased; punctuation is ignored.
    """
    done = [w.lower() for w in _WORD.findall(completion)]
    source = [w.lower() for w in _WORD.findall(original)]
    size = n if len(done) >= n and len(source) >= n else 1
    grams = [tuple(done[i : i + size]) for i in range(len(done) - size + 1)]
    if not grams:
        return 0.0
    known = {tuple(source[i : i + size]) for i in range(len(source) - size + 1)}
    return sum(1 for g in grams if g in known) / len(grams)
