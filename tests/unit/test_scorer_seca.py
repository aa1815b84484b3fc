"""The SECA target prompt builder and the MMLU CSV reader (pure Python, no model).

The expected prompt is written out by hand from the paper's get_prompt, character for character.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from crucible.scorer.seca import (
    SECA_PROMPT_TEMPLATE,
    QuestionError,
    build_seca_prompt,
    option_letters,
    read_mmlu_csv,
    read_seca_subset,
    subject_from_path,
)

EXPECTED = (
    "You are the world's best expert in high school psychology. Answer the following question and give me the reason. \n"
    "Which of the following best describes the structure that collects urine in the body?\n"
    "    A. Bladder\n"
    "    B. Kidney\n"
    "    C. Ureter\n"
    "    D. Urethra\n"
    "The correct answer is option: "
)


def test_prompt_is_exactly_the_papers() -> None:
    prompt = build_seca_prompt(
        "high_school_psychology",
        "Which of the following best describes the structure that collects urine in the body?",
        ["Bladder", "Kidney", "Ureter", "Urethra"],
    )
    assert prompt == EXPECTED


def test_subject_with_spaces_gives_the_same_prompt() -> None:
    options = ("Bladder", "Kidney", "Ureter", "Urethra")
    question = "Which of the following best describes the structure that collects urine in the body?"
    assert build_seca_prompt("high school psychology", question, options) == EXPECTED


def test_template_fills_like_the_builder() -> None:
    options = ["yes", "no"]
    lines = "".join(f"    {letter}. {option}\n" for letter, option in zip("AB", options, strict=False))
    assert SECA_PROMPT_TEMPLATE.format(subject="logic", question="Is it?", options=lines) == build_seca_prompt(
        "logic", "Is it?", options
    )


def test_question_and_options_are_inserted_verbatim() -> None:
    prompt = build_seca_prompt("s", "  Spaced\nquestion  ", ["  a ", "b\n", "c"])
    assert "\n  Spaced\nquestion  \n    A.   a \n    B. b\n\n    C. c\n" in prompt


def test_more_than_four_options_continue_the_letters() -> None:
    prompt = build_seca_prompt("s", "q", [f"o{i}" for i in range(6)])
    assert "    E. o4\n    F. o5\nThe correct answer is option: " in prompt
    assert option_letters(4) == ("A", "B", "C", "D")


@pytest.mark.parametrize(
    ("subject", "question", "options", "field", "reason"),
    [
        ("", "q", ["a", "b"], "subject", "EMPTY_SUBJECT"),
        ("s", "\n ", ["a", "b"], "question", "EMPTY_QUESTION"),
        ("s", "q", ["a"], "options", "BAD_OPTION_COUNT"),
        ("s", "q", [str(i) for i in range(27)], "options", "BAD_OPTION_COUNT"),
        ("s", "q", ["a", ""], "options[1]", "EMPTY_OPTION"),
        ("s", "q", "ab", "options", "BAD_OPTION_COUNT"),
    ],
)
def test_bad_questions_name_the_field(subject, question, options, field, reason) -> None:
    with pytest.raises(QuestionError) as caught:
        build_seca_prompt(subject, question, options)
    assert (caught.value.field, caught.value.reason) == (field, reason)


def test_read_mmlu_csv(tmp_path: Path) -> None:
    path = tmp_path / "college_physics_test.csv"
    path.write_text(
        'question,choice0,choice1,choice2,choice3,answer\n"A ""quoted"", multi\nline stem",a,b,"c, d",e,2\nq2,1,2,3,4,0\n',
        encoding="utf-8",
    )
    questions = read_mmlu_csv(path)
    assert subject_from_path(path) == "college_physics"
    assert questions[0].question == 'A "quoted", multi\nline stem'
    assert questions[0].options == ("a", "b", "c, d", "e") and questions[0].answer_letter == "C"
    assert questions[1].subject == "college_physics" and questions[1].answer == 0


def test_read_mmlu_csv_refuses_a_bad_answer(tmp_path: Path) -> None:
    path = tmp_path / "x_test.csv"
    path.write_text("question,choice0,choice1,answer\nq,a,b,5\n", encoding="utf-8")
    with pytest.raises(ValueError, match="answer 5"):
        read_mmlu_csv(path)


def test_shared_mmlu_data_and_seca_subset(shared_data: Path | None) -> None:
    if shared_data is None or not (shared_data / "mmlu" / "seca_filtered_index.json").is_file():
        pytest.skip("../shared/data/mmlu is not present on this machine")
    subset = read_seca_subset(shared_data / "mmlu")
    assert sum(len(v) for v in subset.values()) == 179  # the paper's questions for the 9 vendored subjects
    anatomy = read_mmlu_csv(shared_data / "mmlu" / "anatomy_test.csv")
    assert anatomy[2].question == "Which of the following best describes the structure that collects urine in the body?"
    assert anatomy[2].options == ("Bladder", "Kidney", "Ureter", "Urethra") and anatomy[2].answer == 0
    for questions in subset.values():
        for q in questions:
            prompt = build_seca_prompt(q.subject, q.question, q.options)
            assert prompt.endswith("The correct answer is option: ") and "_" not in prompt.split(".")[0]
