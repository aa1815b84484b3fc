"""Content alignment of question rewordings (issue 23): each content word must find itself, another form of itself, or
a close contextual vector in the other text; function and framing words are free. A golden test against a plain
loop, and the cases the default check must see (a dropped qualifier, an added condition, least for commonest).
"""

from __future__ import annotations

import torch

from crucible.proposer.alignment import WordVectors, align, is_content


def _text(words: str, vectors: dict[str, list[float]]) -> WordVectors:
    split = words.split()
    matrix = torch.tensor([vectors[w.lower()] for w in split], dtype=torch.float32)
    return WordVectors(tuple(split), torch.nn.functional.normalize(matrix, dim=-1))


VEC = {
    "which": [1, 0, 0, 0, 0],
    "of": [1, 0.1, 0, 0, 0],
    "the": [1, 0, 0.1, 0, 0],
    "following": [1, 0.1, 0.1, 0, 0],
    "these": [1, 0.2, 0, 0, 0],
    "is": [1, 0, 0, 0.1, 0],
    "closest": [0, 1, 0, 0, 0],
    "nearest": [0, 0.9, 0.3, 0, 0],  # cosine 0.95 with closest
    "planet": [0, 0, 1, 0, 0],
    "planets": [0, 0, 0.8, 0.6, 0],  # another form: matched by its stem, not its vector
    "sun": [0, 0, 0, 1, 0],
    "red": [0, 0.3, 0, 0, 0.95],
}


def test_a_synonym_and_another_form_align_and_framing_words_are_free():
    original = _text("Which planet is closest the Sun", VEC)
    rewrite = _text("Which of these planets is nearest the Sun", VEC)
    a = align(original, rewrite, 0.5)
    assert a.dropped == () and a.added == ()
    assert abs(a.worst_recall - 0.9486833) < 1e-4  # closest -> nearest by cosine; planet -> planets by stem (1.0)
    assert a.score == min(a.worst_recall, a.worst_precision)


def test_added_and_dropped_content_words_are_named_and_fail_the_threshold():
    original = _text("Which planet is closest the Sun", VEC)
    added = align(original, _text("Which red planet is closest the Sun", VEC), 0.5)
    assert added.added == ("red",) and added.dropped == () and added.score < 0.5
    dropped = align(original, _text("Which planet is closest", VEC), 0.5)
    assert dropped.dropped == ("Sun",) and dropped.score < 0.5


def test_alignment_equals_a_plain_per_word_loop():
    original = _text("Which of the following planet is closest the Sun", VEC)
    rewrite = _text("Which red planets is nearest", VEC)
    a = align(original, rewrite, 0.5)

    def best(word, vector, other):
        stems = {w.lower().rstrip("s") for w in other.words}
        if word.lower().rstrip("s") in stems:
            return 1.0
        return max(0.0, max(float(vector @ v) for v in other.vectors))

    recall = [best(w, v, rewrite) for w, v in zip(original.words, original.vectors, strict=True) if is_content(w)]
    precision = [best(w, v, original) for w, v in zip(rewrite.words, rewrite.vectors, strict=True) if is_content(w)]
    assert abs(a.recall - sum(recall) / len(recall)) < 1e-6 and abs(a.worst_recall - min(recall)) < 1e-6
    assert abs(a.precision - sum(precision) / len(precision)) < 1e-6 and abs(a.worst_precision - min(precision)) < 1e-6


def test_negations_and_comparisons_are_content_but_framing_is_not():
    for word in ("least", "most", "not", "only", "all", "commonest"):
        assert is_content(word)
    for word in ("which", "following", "these", "one", "best", "describes", "the"):
        assert not is_content(word)
