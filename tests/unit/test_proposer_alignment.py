"""Content alignment of question rewordings (issue 23): each content word must find itself, another form of itself, or
a close contextual vector in the other text; function and framing words are free. A golden test against a plain
loop, and the cases the default check must see (a dropped qualifier, an added condition, least for commonest).
"""

from __future__ import annotations

import torch

from crucible.proposer import alignment
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

    def best(word, vector, own, other, claim):
        stems = {w.lower().rstrip("s") for w in other.words}
        if word.lower().rstrip("s") in stems:
            return 1.0
        # Original -> rewording only: words of the rewording that are forms of the original's content words belong
        # to those words.
        claimed = {w.lower().rstrip("s") for w in own.words if is_content(w)} if claim else set()
        free = [v for w, v in zip(other.words, other.vectors, strict=True) if w.lower().rstrip("s") not in claimed]
        return max(0.0, max((float(vector @ v) for v in free), default=0.0))

    recall = [best(w, v, original, rewrite, True) for w, v in zip(original.words, original.vectors, strict=True) if is_content(w)]
    precision = [
        best(w, v, rewrite, original, False) for w, v in zip(rewrite.words, rewrite.vectors, strict=True) if is_content(w)
    ]
    assert abs(a.recall - sum(recall) / len(recall)) < 1e-6 and abs(a.worst_recall - min(recall)) < 1e-6
    assert abs(a.precision - sum(precision) / len(precision)) < 1e-6 and abs(a.worst_precision - min(precision)) < 1e-6


def test_a_word_dropped_from_a_list_does_not_borrow_its_neighbours_counterpart():
    """The attack counted a flip for "... produces fibrinogen" from "... the production of prothrombin and
    fibrinogen": the encoder puts the two clotting proteins close, so the dropped one matched the kept one's copy."""
    vec = {
        "liver": [1, 0, 0, 0],
        "makes": [0, 1, 0, 0],
        "prothrombin": [0, 0, 0.9, 0.436],  # cosine 0.9 with fibrinogen
        "and": [0, 0.1, 0, 0],
        "fibrinogen": [0, 0, 1, 0],
    }
    a = align(_text("liver makes prothrombin and fibrinogen", vec), _text("liver makes fibrinogen", vec), 0.5)
    assert a.dropped == ("prothrombin",) and a.score < 0.5
    kept = align(_text("liver makes prothrombin and fibrinogen", vec), _text("fibrinogen and prothrombin liver makes", vec), 0.5)
    assert kept.dropped == () and kept.added == () and kept.score == 1.0


def test_negations_and_comparisons_are_content_but_framing_is_not():
    for word in ("least", "most", "not", "only", "all", "commonest"):
        assert is_content(word)
    for word in ("which", "following", "these", "one", "best", "describes", "the"):
        assert not is_content(word)


# ---- names, scopes, look-alike terms and word forms (held-out candidates the alignment alone passed) ---------------

#: Vectors where every content word sits close to its neighbours, as short questions on one topic do in MiniLM: the
#: alignment alone passes each pair below (worst match >= 0.5); the rules must refuse them.
_VOCABULARY = (
    "at what temperature in degrees celsius does pure water freeze sea level , ? what is the chemical formula of"
    " chemistry in osteoclasts osteoblasts which organ pumps blood through human body according to anatomy"
    " largest ocean on earth red planet known as king jungle why apps languages like c + # and are prone"
)
NEAR = {w: [1.0, 0.3 * k / 10, 0.0] for k, w in enumerate(_VOCABULARY.split())}


def _near(words: str) -> WordVectors:
    split = words.split()
    matrix = torch.tensor([NEAR[w.lower()] for w in split], dtype=torch.float32)
    return WordVectors(tuple(split), torch.nn.functional.normalize(matrix, dim=-1))


def test_a_dropped_or_added_name_fails_even_when_its_vector_is_near():
    original = _near("At what temperature in degrees Celsius does pure water freeze at sea level ?")
    rewrite = _near("At what temperature does pure water freeze at sea level ?")
    a = align(original, rewrite, 0.5)
    assert min(a.worst_recall, a.worst_precision) >= 0.5  # the vectors alone would pass it
    assert a.names == ("Celsius",) and a.score == 0.0
    assert a.dropped == ("Celsius",) and a.added == ()  # named in the reply's dropped_words
    assert align(_near("Which is the largest ocean ?"), _near("Which is the largest ocean on Earth ?"), 0.5).names == ("Earth",)


def test_a_name_kept_in_another_case_or_a_capitalised_sentence_start_is_no_change():
    a = align(_near("Which planet is known as the Red Planet ?"), _near("Which planet is the red planet ?"), 0.5)
    assert a.names == ()
    b = align(_near("Which is the King of the Jungle ?"), _near("What is the king of the jungle ?"), 0.5)
    assert b.names == ()
    c = align(_near("Osteoclasts"), _near("Which is osteoclasts ?"), 0.5)
    assert c.names == ()  # a capital that starts a sentence says nothing


def test_an_added_scope_fails_and_a_kept_one_does_not():
    original = _near("What is the chemical formula of water ?")
    a = align(original, _near("In chemistry , what is the chemical formula of water ?"), 0.5)
    assert min(a.worst_recall, a.worst_precision) >= 0.5
    assert a.scope == ("chemistry",) and a.added == ("chemistry",) and a.score == 0.0
    b = align(
        _near("Which organ pumps blood through the human body ?"),
        _near("Which organ pumps blood through the human body , according to human anatomy ?"),
        0.5,
    )
    assert b.scope == ("anatomy",) and b.score == 0.0
    kept = align(_near("In osteoclasts , what is the chemical formula ?"), _near("In osteoclasts , what is the formula ?"), 0.5)
    assert kept.scope == ()


def test_a_look_alike_term_is_a_different_term():
    a = align(_near("Which is osteoclasts ?"), _near("Which is osteoblasts ?"), 0.5)
    assert min(a.worst_recall, a.worst_precision) == 0.0 and "osteoclasts" in a.dropped and a.score == 0.0
    for first, second, alike in [
        ("afferent", "efferent", True),
        ("hypothyroidism", "hyperthyroidism", True),
        ("multiplied", "multiplication", False),
        ("location", "located", False),
        ("bitmap", "bitmapped", False),
    ]:
        assert alignment._look_alike(first, second) is alike, (first, second)


def test_word_forms_share_a_stem():
    for first, second in [("cultures", "culture"), ("moved", "move"), ("bitmapped", "bitmap"), ("jungles", "jungle")]:
        assert alignment.stem(first) == alignment.stem(second), (first, second)
    for first, second in [("boxes", "box"), ("cells", "cell"), ("running", "run"), ("agreed", "agree")]:
        assert alignment.stem(first) == alignment.stem(second), (first, second)
    assert alignment.stem("least") != alignment.stem("lease")


def test_a_name_said_more_often_lists_one_more_thing():
    original = _near("Why are apps in languages like C , C + + prone ?")
    a = align(original, _near("Why are apps in languages like C , C + + , and C # prone ?"), 0.5)
    assert a.names == ("C",) and a.score == 0.0  # a campaign candidate the check passed: C# added
    same = align(original, _near("Why are apps in languages like C , C + + , prone ?"), 0.5)
    assert same.names == ()
