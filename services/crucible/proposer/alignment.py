"""Content preservation of a question rewording: BERTScore-style alignment of content words both ways, with the
embedding model's contextual word vectors, so that content added, dropped or refocused is seen (a cosine is not).

`word_vectors` runs the encoder (torch, in the caller's worker thread); `align` is a pure function of its output.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections import Counter
from collections.abc import Sequence

import torch

from crucible.models import LoadedModel
from crucible.proposer.lexicon import STRICT_WORDS, is_content, stem


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
    content words whose best match is below the threshold they were computed at, or a name or scope word that only
    one of the texts has.
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
    #: Names (capitalised words inside a sentence, acronyms) that only one of the texts has, in no form: a name is
    #: kept as it is, a near vector ("Celsius" for "temperature", "Earth" for "ocean") does not stand in for it.
    names: tuple[str, ...] = ()
    #: Content words of a scope the rewording puts around the question ("In chemistry, ...", "..., according to
    #: human anatomy?") that the original does not have in any form: a field, a theory or a source added.
    scope: tuple[str, ...] = ()

    @property
    def score(self) -> float:
        """The weakest link: the smaller of the two worst matches (a single dropped or added content word fails it);
        0 when content words are repeated MAX_REPEATS times or more beyond the original, or when a name or a
        scope is added or dropped."""
        if self.repeats >= MAX_REPEATS or self.names or self.scope:
            return 0.0
        return min(self.worst_recall, self.worst_precision)


#: Extra repetitions of the original's content words that make a rewording garbled (1 is a normal rewording:
#: "when the foot is abducted, where does the foot move").
MAX_REPEATS = 2


def _repeats(first: Sequence[str], second: Sequence[str]) -> int:
    before = Counter(stem(w) for w in first if is_content(w))
    after = Counter(stem(w) for w in second if is_content(w))
    return sum(max(0, n - before[stem]) for stem, n in after.items() if before[stem])


#: Tokens after which a word starts a sentence (its capital says nothing); the encoder splits punctuation off.
_SENTENCE_BREAKS = frozenset([".", "?", "!", ":", ";", "|", '"', "(", "\u201c"])


def _names(words: Sequence[str]) -> list[str]:
    """Names in `words`: a capitalised content word that does not start a sentence, or an acronym (two or more
    capitals, e.g. 'TCP', 'UK', 'II') anywhere."""
    out = []
    for i, word in enumerate(words):
        if not is_content(word) or not word[:1].isupper():
            continue
        starts = i == 0 or words[i - 1] in _SENTENCE_BREAKS
        acronym = len(word) > 1 and word.isupper() and word.isalpha()
        if acronym or not starts:
            out.append(word)
    return out


def _name_changes(first: Sequence[str], second: Sequence[str]) -> tuple[str, ...]:
    """Names of either text that the other lacks in every form (compared case-blind, so 'the Red Planet' keeps
    'red planet'); words in STRICT_WORDS ('NOT', 'LEAST') are left to the strict match."""
    stems = ({stem(w) for w in first}, {stem(w) for w in second})
    changed = [w for w in _names(first) if stem(w) not in stems[1]]
    changed += [w for w in _names(second) if stem(w) not in stems[0]]
    # A name said more often in the rewording lists one more thing ("C, C++" -> "C, C++, and C#").
    before, after = Counter(stem(w) for w in first), Counter(stem(w) for w in second)
    changed += [w for w in dict.fromkeys(_names(second)) if before[stem(w)] and after[stem(w)] > before[stem(w)]]
    return tuple(w for w in changed if w.lower() not in STRICT_WORDS)


#: Phrases that put a scope around a question: "In chemistry, ...", "According to Kant, ...", "In the context of
#: X, ...", and at the end ", according to X?". Words of the phrase that are mere framing ("this context") do not count.
_SCOPE_OPENERS = (("in",), ("within",), ("according", "to"), ("from",), ("based", "on"), ("for",))
_SCOPE_FRAMING = frozenset(["context", "case", "view", "terms", "perspective", "respect", "words", "general", "short"])
_MAX_SCOPE_WORDS = 8


def _scope_words(words: Sequence[str]) -> list[str]:
    """Content words of a leading "<opener> ..., " or a trailing ", according to ...?" scope phrase in `words`."""
    lower = [w.lower() for w in words]
    spans: list[Sequence[str]] = []
    for opener in _SCOPE_OPENERS:
        if tuple(lower[: len(opener)]) == opener and "," in lower[: _MAX_SCOPE_WORDS + len(opener) + 1]:
            spans.append(words[len(opener) : lower.index(",")])
    for k in range(max(0, len(lower) - _MAX_SCOPE_WORDS - 3), len(lower) - 1):
        if lower[k] == "," and lower[k + 1 : k + 3] == ["according", "to"]:
            end = next((j for j in range(k + 3, len(words)) if words[j] in _SENTENCE_BREAKS or words[j] == ","), None)
            spans.append(words[k + 3 : end])
    return [w for span in spans for w in span if is_content(w) and w.lower() not in _SCOPE_FRAMING]


def _scope_added(first: Sequence[str], second: Sequence[str]) -> tuple[str, ...]:
    """Words of a scope phrase in `second` (the rewording) that `first` lacks in every form."""
    stems = {stem(w) for w in first}
    return tuple(w for w in _scope_words(second) if stem(w) not in stems)


def _matches(source: WordVectors, target: WordVectors, *, claim: bool = False) -> list[tuple[str, float]]:
    """(content word of source, best match in target) for every content word of source.

    With `claim`, a word of the target that is another form of one of the source's content words is that word's
    counterpart and is claimed by it: the source's other words are matched only against the unclaimed rest. Used
    for the original's words (what the rewording dropped): otherwise a word dropped from a list ("prothrombin and
    fibrinogen" -> "fibrinogen") borrows its neighbour's counterpart, which the encoder puts close to it, and looks
    kept. Not for the rewording's words: a rewording often spells one word out in two ("who painted" -> "which
    artist painted", "boiling point" -> "what temperature ... boil"), and the new word leans on the kept one."""
    target_stems = {stem(w) for w in target.words}
    source_stems = {stem(w) for w in source.words if is_content(w)}
    if target.vectors.shape[0]:
        similarity = source.vectors @ target.vectors.T
        claimed = [j for j, w in enumerate(target.words) if claim and stem(w) in source_stems]
        if claimed:  # (a word of the source left with no unclaimed word at all matches nothing: 0)
            similarity = similarity.clone()
            similarity[:, claimed] = -1.0
        top = similarity.max(dim=1)
        best, nearest = top.values.tolist(), [target.words[int(i)] for i in top.indices]
    else:
        best, nearest = [0.0] * len(source.words), [""] * len(source.words)
    result = []
    for word, cosine, match in zip(source.words, best, nearest, strict=True):
        if not is_content(word):
            continue
        if stem(word) in target_stems:
            result.append((word, 1.0))
        elif word.lower() in STRICT_WORDS or _look_alike(word, match):
            result.append((word, 0.0))
        else:
            result.append((word, max(0.0, float(cosine))))
    return result


def _look_alike(first: str, second: str) -> bool:
    """True for two different terms spelt almost alike that differ before their last few letters ('osteoclasts'/
    'osteoblasts', 'afferent'/'efferent', 'hypothyroidism'/'hyperthyroidism'): the encoder puts them close, yet they
    name different things. Words that share all but their last few letters ('multiplied'/'multiplication') are forms
    of one word."""
    a, b = first.lower(), second.lower()
    if min(len(a), len(b)) < 5 or stem(a) == stem(b):
        return False
    prefix = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return prefix < min(len(a), len(b)) - 4 and difflib.SequenceMatcher(None, a, b).ratio() >= 0.75


def align(first: WordVectors, second: WordVectors, threshold: float) -> Alignment:
    """Content alignment of `second` (a rewording) against `first` (the original), with `threshold` for dropped/added."""
    recall = _matches(first, second, claim=True)
    precision = _matches(second, first)

    def mean(pairs: list[tuple[str, float]]) -> float:
        return sum(s for _, s in pairs) / len(pairs) if pairs else 1.0

    def worst(pairs: list[tuple[str, float]]) -> float:
        return min((s for _, s in pairs), default=1.0)

    names = _name_changes(first.words, second.words)
    scope = _scope_added(first.words, second.words)
    dropped = [w for w, s in recall if s < threshold]
    added = [w for w, s in precision if s < threshold]
    dropped += [w for w in names if w in first.words and w not in dropped]  # the words named in the reply
    added += [w for w in (*names, *scope) if w in second.words and w not in added]
    return Alignment(
        mean(recall),
        mean(precision),
        worst(recall),
        worst(precision),
        tuple(dropped),
        tuple(added),
        _repeats(first.words, second.words),
        names,
        scope,
    )
