"""Content preservation of a question rewording: BERTScore-style alignment of content words both ways, with the
embedding model's contextual word vectors, so that content added, dropped or refocused is seen (a cosine is not).

`word_vectors` runs the encoder (torch, in the caller's worker thread); `align` is a pure function of its output.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence

import torch

from crucible.models import LoadedModel

#: Function words and the framing of a multiple-choice question ("which of the following", "best describes"): a
#: rewording may add, drop or trade these freely. Everything else is a content word that must be kept (exactly, as
#: another form of the same word, or as a word the encoder aligns with it). Negations, quantifiers and comparison
#: words are deliberately not here: "least", "not", "only", "all" change what is asked.
FUNCTION_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "it",
        "its",
        "it's",
        "they",
        "them",
        "their",
        "theirs",
        "he",
        "him",
        "his",
        "she",
        "her",
        "hers",
        "we",
        "us",
        "our",
        "you",
        "your",
        "i",
        "me",
        "my",
        "mine",
        "one",
        "ones",
        "someone",
        "something",
        "anything",
        "of",
        "to",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "into",
        "onto",
        "upon",
        "about",
        "as",
        "than",
        "then",
        "so",
        "such",
        "also",
        "too",
        "very",
        "just",
        "and",
        "or",
        "but",
        "if",
        "whether",
        "while",
        "because",
        "since",
        "although",
        "though",
        "thus",
        "therefore",
        "hence",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "done",
        "doing",
        "has",
        "have",
        "had",
        "having",
        "can",
        "could",
        "should",
        "would",
        "will",
        "shall",
        "may",
        "might",
        "must",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "whatever",
        "whichever",
        "following",
        "below",
        "above",
        "listed",
        "given",
        "options",
        "option",
        "choices",
        "choice",
        "statement",
        "statements",
        "answer",
        "answers",
        "best",
        "describes",
        "describe",
        "described",
        "description",
        "correct",
        "correctly",
        "true",
        "accurately",
        "accurate",
        "called",
        "known",
        "termed",
        "named",
        "refer",
        "refers",
        "referred",
        "term",
        "question",
        "questions",
        "ask",
        "asks",
        "asked",
        "please",
        "identify",
        "determine",
        "select",
        "choose",
        "find",
        "tell",
        "example",
        "instance",
        "e.g.",
        "i.e.",
        "etc",
        "typically",
        "usually",
        "generally",
        "commonly",
        "often",
        "kind",
        "type",
        "sort",
        "form",
    ]
)

#: Polarity, degree, quantity and cause/effect words: a near vector is not enough ("most" and "least", "cause" and
#: "effect" sit close in any encoder), they must be kept as they are (or in another form), else the pair changes what
#: is asked.
STRICT_WORDS = frozenset(
    [
        "not",
        "no",
        "never",
        "none",
        "neither",
        "nor",
        "without",
        "except",
        "cannot",
        "nothing",
        "nobody",
        "most",
        "least",
        "more",
        "less",
        "fewer",
        "fewest",
        "many",
        "few",
        "much",
        "all",
        "every",
        "each",
        "only",
        "always",
        "some",
        "any",
        "both",
        "either",
        "sometimes",
        "first",
        "last",
        "largest",
        "smallest",
        "highest",
        "lowest",
        "greatest",
        "maximum",
        "minimum",
        "longest",
        "shortest",
        "earliest",
        "latest",
        "increase",
        "decrease",
        "increases",
        "decreases",
        "before",
        "after",
        "above",
        "below",
        "inside",
        "outside",
        "positive",
        "negative",
        "false",
        "incorrect",
        "cause",
        "causes",
        "caused",
        "due",
        "effect",
        "effects",
        "result",
        "results",
        "reason",
        "purpose",
        "because",
    ]
)

_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?|\d+(?:[.,]\d+)*")


def _stem(word: str) -> str:
    """A light English stem (case, possessive and common inflections), enough to tell 'cells' from 'cell'."""
    w = word.lower().replace("\u2019", "'")
    if w.endswith("'s"):
        w = w[:-2]
    for suffix, keep in (("ies", "y"), ("ied", "y"), ("sses", "ss"), ("ing", ""), ("ed", ""), ("es", ""), ("s", "")):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3 and not w.endswith("ss"):
            return w[: -len(suffix)] + keep
    return w


def is_content(word: str) -> bool:
    """True for a word that carries the question's content (not a function or framing word)."""
    return word.lower() not in FUNCTION_WORDS and any(ch.isalnum() for ch in word)


@dataclasses.dataclass(frozen=True)
class WordVectors:
    """One text's words (as written) and their contextual vectors [W, D], unit norm, from the embedding model."""

    words: tuple[str, ...]
    vectors: torch.Tensor


@torch.inference_mode()
def word_vectors(loaded: LoadedModel, texts: Sequence[str], *, batch_size: int = 32) -> list[WordVectors]:
    """Contextual word vectors of each text: the encoder's last hidden states averaged over each word's sub-tokens
    (words as the tokenizer's pre-tokenizer splits them), L2-normalised. Needs a fast tokenizer (word_ids)."""
    out: list[WordVectors] = []
    device = next(loaded.model.parameters()).device
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        encoded = loaded.tokenizer(
            chunk,
            padding=True,
            truncation=loaded.max_length is not None,
            max_length=loaded.max_length,
            return_tensors="pt",
            return_offsets_mapping=True,
        )
        offsets = encoded.pop("offset_mapping")
        hidden = loaded.model(**encoded.to(device)).last_hidden_state.float().cpu()
        for row, text in enumerate(chunk):
            ids = encoded.word_ids(row)
            spans: dict[int, list[int]] = {}
            for position, word in enumerate(ids):
                if word is not None:
                    spans.setdefault(word, []).append(position)
            words, vectors = [], []
            for positions in spans.values():
                begin, end = int(offsets[row, positions[0], 0]), int(offsets[row, positions[-1], 1])
                words.append(text[begin:end])
                vectors.append(hidden[row, positions].mean(dim=0))
            matrix = torch.stack(vectors) if vectors else torch.empty((0, hidden.shape[-1]))
            out.append(WordVectors(tuple(words), torch.nn.functional.normalize(matrix, p=2, dim=-1)))
    return out


@dataclasses.dataclass(frozen=True)
class Alignment:
    """How well two texts' content words align, each way.

    `recall`: mean over the first text's content words of their best match in the second (1.0 for the same word
    or another form of it, else the best cosine of contextual vectors); `precision`: the same from the second
    text to the first. `worst_recall`/`worst_precision` are the smallest such matches, and `dropped`/`added` the
    content words whose best match is below the threshold they were computed at.
    """

    recall: float
    precision: float
    worst_recall: float
    worst_precision: float
    dropped: tuple[str, ...]
    added: tuple[str, ...]
    #: Extra occurrences in the second text of content words the first has ("the direction of the foot ... foot"): a
    #: small rewriter that loops garbles the question while every word still aligns.
    repeats: int = 0

    @property
    def score(self) -> float:
        """The weakest link: the smaller of the two worst matches (a single dropped or added content word fails it);
        0 when content words are repeated MAX_REPEATS times or more beyond the original."""
        return 0.0 if self.repeats >= MAX_REPEATS else min(self.worst_recall, self.worst_precision)


#: Extra repetitions of the original's content words that make a rewording garbled (1 is a normal rewording:
#: "when the foot is abducted, where does the foot move").
MAX_REPEATS = 2


def _repeats(first: Sequence[str], second: Sequence[str]) -> int:
    before = Counter(_stem(w) for w in first if is_content(w))
    after = Counter(_stem(w) for w in second if is_content(w))
    return sum(max(0, n - before[stem]) for stem, n in after.items() if before[stem])


def _matches(source: WordVectors, target: WordVectors) -> list[tuple[str, float]]:
    """(content word of source, best match in target) for every content word of source."""
    target_stems = {_stem(w) for w in target.words}
    if target.vectors.shape[0]:
        similarity = source.vectors @ target.vectors.T
        best = similarity.max(dim=1).values.tolist()
    else:
        best = [0.0] * len(source.words)
    result = []
    for word, cosine in zip(source.words, best, strict=True):
        if not is_content(word):
            continue
        if _stem(word) in target_stems:
            result.append((word, 1.0))
        else:
            result.append((word, 0.0 if word.lower() in STRICT_WORDS else max(0.0, float(cosine))))
    return result


def align(first: WordVectors, second: WordVectors, threshold: float) -> Alignment:
    """Content alignment of `second` (a rewording) against `first` (the original), with `threshold` for dropped/added."""
    recall = _matches(first, second)
    precision = _matches(second, first)

    def mean(pairs: list[tuple[str, float]]) -> float:
        return sum(s for _, s in pairs) / len(pairs) if pairs else 1.0

    def worst(pairs: list[tuple[str, float]]) -> float:
        return min((s for _, s in pairs), default=1.0)

    return Alignment(
        mean(recall),
        mean(precision),
        worst(recall),
        worst(precision),
        tuple(w for w, s in recall if s < threshold),
        tuple(w for w, s in precision if s < threshold),
        _repeats(first.words, second.words),
    )
