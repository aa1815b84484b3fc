"""The question checks that Propose (EQUIVALENT_QUESTION cleaning) and CheckEquivalence (QUESTION) share: forms,
answers and named options, listed options, length, surface meaning changes and near-copies, each with its reason."""

from __future__ import annotations

import pytest

from crucible.proposer import cleaning
from crucible.proposer.cleaning import (
    ANSWERS,
    DEGENERATE,
    EMPTY,
    KEPT,
    LENGTH_CHANGE,
    MEANING_CHANGE,
    NEAR_COPY,
    NOT_A_QUESTION,
    REPEATS_OPTIONS,
    clean_question,
    question_form,
    question_problem,
)

STEM = "Delusions of grandeur are most characteristic of"
STEM_OPTIONS = ("major depression", "schizophrenia", "bipolar disorder", "anxiety")
QUESTION = "Which planet is closest to the Sun?"
PLANETS = ("Venus", "Earth", "Mercury", "Mars")


@pytest.mark.parametrize(
    "text, form",
    [
        (QUESTION, cleaning.FORM_QUESTION),
        ("Which planet is closest to the Sun?\u201d", cleaning.FORM_QUESTION),
        ("______ is the largest planet.", cleaning.FORM_BLANK),
        ("Find the degree of the field extension Q(sqrt(2)) over Q.", cleaning.FORM_TASK),
        (STEM, cleaning.FORM_OPEN),
        ("TCP protocol is responsible (among other things) for", cleaning.FORM_OPEN),
        ("Mercury is the planet closest to the Sun.", cleaning.FORM_STATEMENT),
        ("What is the capital of France.", cleaning.FORM_QUESTION),
    ],
)
def test_question_form(text, form):
    assert question_form(text) == form


@pytest.mark.parametrize(
    "rewrite, original, options, reason",
    [
        ("Which condition are delusions of grandeur most typical of?", STEM, STEM_OPTIONS, ""),
        ("Which planet lies nearest to the Sun?", QUESTION, PLANETS, ""),
        ("Delusions of grandeur are most characteristic of schizophrenia.", STEM, STEM_OPTIONS, ANSWERS),
        ("The answer is C. Mercury", QUESTION, PLANETS, ANSWERS),
        ("C", QUESTION, PLANETS, ANSWERS),
        ("Is it Venus or Mars that is closest to the Sun?", QUESTION, PLANETS, REPEATS_OPTIONS),
        ("Which planet is closest?\nA. Venus\nB. Earth", QUESTION, PLANETS, REPEATS_OPTIONS),
        ("Delusions of grandeur are a symptom seen in many patients.", STEM, STEM_OPTIONS, NOT_A_QUESTION),
        (
            "Which planet, of all the eight planets that orbit our star in the solar system, sits in the orbit that is "
            "closest to the Sun itself, measured by its average distance?",
            QUESTION,
            PLANETS,
            LENGTH_CHANGE,
        ),
        ("Delusions of grandeur are least characteristic of", STEM, STEM_OPTIONS, MEANING_CHANGE),
        ("Which planet is not closest to the Sun?", QUESTION, PLANETS, MEANING_CHANGE),
        ("What is 7 multiplied by 9?", "What is 7 multiplied by 8?", ("54", "56", "58", "64"), MEANING_CHANGE),
        ("Which planet is the closest to the Sun?", QUESTION, PLANETS, NEAR_COPY),
        ("Which statement about enzymes is false?", "Which statement about enzymes is NOT true?", (), ""),
    ],
)
def test_question_problem_names_the_first_reason(rewrite, original, options, reason):
    assert question_problem(rewrite, original, options)[0] == reason


def test_near_copies_are_dropped_by_propose_but_equivalent_for_the_meaning_check():
    rewrite = "Which planet is the closest to the Sun?"
    assert question_problem(rewrite, QUESTION, PLANETS)[0] == NEAR_COPY
    assert question_problem(rewrite, QUESTION, PLANETS, near_copy=False) == ("", "")


def test_clean_question_cleans_then_checks():
    assert clean_question(
        "Reworded question: Which planet lies nearest to the Sun?\nA. Venus", source=QUESTION, options=PLANETS
    ) == cleaning.Cleaned("Which planet lies nearest to the Sun?", KEPT)
    assert clean_question("", source=QUESTION, options=PLANETS).outcome == EMPTY
    assert clean_question(QUESTION, source=QUESTION, options=PLANETS).outcome == DEGENERATE
    assert clean_question("Mercury is closest.", source=QUESTION, options=PLANETS).outcome == ANSWERS
    assert set(cleaning.DROP_REASONS) >= {
        EMPTY,
        DEGENERATE,
        ANSWERS,
        NOT_A_QUESTION,
        REPEATS_OPTIONS,
        NEAR_COPY,
        LENGTH_CHANGE,
        MEANING_CHANGE,
    }


def test_an_added_word_that_echoes_an_option_answers():
    # A flip of the acceptance campaign: "or nephrology" points at the nephr- options and passed every other check.
    original = "Which of the following conditions is characterized by the presence of kidney stones (renal calculi)?"
    options = ["Glomerulonephritis", "Interstitial nephritis", "Nephrolithiasis", "Polycystic kidney"]
    rewrite = "What is the condition that describes the presence of kidney stones (renal calculi) or nephrology?"
    reason, detail = cleaning.question_problem(rewrite, original, options, near_copy=False)
    assert reason == cleaning.ANSWERS and "option B" in detail  # "nephritis" starts as "nephrology" does
    # The same start in the original (or no added word) is no hint.
    kept = "What condition is characterized by the presence of kidney stones (renal calculi)?"
    assert cleaning.question_problem(kept, original, options, near_copy=False) == ("", "")
    assert cleaning.hints_option("Which nephron part filters blood?", "Which nephron part filters the blood?", options) == []
