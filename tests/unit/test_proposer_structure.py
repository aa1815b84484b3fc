"""Structure checks of question rewordings (issue 23): the same content words arranged to ask something else.

The refused pairs are rewordings the attack counted as flips or the default check passed on the labelled benchmark;
the kept ones are faithful rewordings of the same shapes, which must still pass.
"""

from __future__ import annotations

import pytest

from crucible.proposer.cleaning import MEANING_CHANGE, question_problem
from crucible.proposer.structure import asks_identity, clause_swap, negation_moved, structure_change

VOLTAGE = "A voltage will be induced in a wire loop when the magnetic field within that loop"
CIPHER = "Which of the following is not a block cipher operating mode?"
NERVE = "The infraorbital nerve"


@pytest.mark.parametrize(
    ("original", "rewrite", "says"),
    [
        (VOLTAGE, "What happens to the magnetic field when a voltage is induced in a wire loop?", "'magnetic', 'field' out of"),
        (
            "A possible effect of damage to the third cranial nerve by trauma to the orbit is",
            "What is the possible effect of trauma to the third cranial nerve by damage to the orbit?",
            "'by' clause",
        ),
        ("If the heart rate rises, blood pressure", "If blood pressure rises, what happens to the heart rate?", "'if'"),
    ],
)
def test_content_moved_across_a_clause_is_refused(original, rewrite, says):
    assert says in clause_swap(original, rewrite)
    assert question_problem(rewrite, original)[0] == MEANING_CHANGE


@pytest.mark.parametrize(
    ("original", "rewrite"),
    [
        ("If the foot is abducted, it is moved in which direction?", "Which direction does the foot move in if it is abducted?"),
        (
            "What happens to blood pressure when the heart rate increases?",
            "When the heart rate increases, what happens to blood pressure?",
        ),
        (VOLTAGE, "What must the magnetic field within a wire loop do for a voltage to be induced in it?"),
        ("Which gland is stimulated by the hormone TSH?", "Which gland does the hormone TSH stimulate?"),  # 'by' only once
    ],
)
def test_clauses_kept_whole_pass(original, rewrite):
    assert clause_swap(original, rewrite) == ""


def test_a_class_negation_made_into_a_verb_is_refused_but_a_new_verb_is_left_alone():
    assert "negates 'operate'" in negation_moved(CIPHER, "Which mode does not operate on block ciphers?")
    assert question_problem("Which mode does not operate on block ciphers?", CIPHER)[0] == MEANING_CHANGE
    assert negation_moved(CIPHER, "Which of these is not a block cipher operating mode?") == ""
    # "is NOT a property of" -> "does NOT belong to": another verb, the content alignment's call (labelled faithful)
    bitmap = "Which of the following is NOT a property of bitmap graphics?"
    assert negation_moved(bitmap, "Which one of these does NOT belong to bitmap graphics?") == ""


@pytest.mark.parametrize(
    ("original", "rewrite"),
    [
        (NERVE, "Which one of these answers is the infraorbital nerve?"),
        (NERVE, "What is the infraorbital nerve?"),
        ("According to Wolf, a moral saint:", "What is a moral saint, according to Wolf?"),
    ],
)
def test_asking_what_an_open_stems_subject_is_is_refused(original, rewrite):
    assert "stem's subject" in asks_identity(original, rewrite)
    assert question_problem(rewrite, original)[0] == MEANING_CHANGE


@pytest.mark.parametrize(
    ("original", "rewrite"),
    [
        (NERVE, "Which statement about the infraorbital nerve is true?"),  # asks about it, not what it is
        ("The largest planet in the solar system is", "Which planet is the largest in the solar system?"),  # ends on 'is'
        ("What is Nmap?", "What is a Nmap?"),  # not an open stem
    ],
)
def test_other_questions_about_the_subject_pass(original, rewrite):
    assert structure_change(original, rewrite, open_stem=not original.endswith("?")) == ""
