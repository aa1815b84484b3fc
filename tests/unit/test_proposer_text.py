"""The proposer's text handling: prompts for both modes, and the cleaning and classification of raw generations."""

from __future__ import annotations

import pytest

from crucible.proposer import prompts
from crucible.proposer.cleaning import (
    DEGENERATE,
    EMPTY,
    KEPT,
    clean_candidate,
    is_repetition_loop,
    question_problem,
    strip_artefacts,
)

SOURCE = "The committee postponed the vote because several members were travelling abroad."
QUESTION = "Which gas do plants absorb from the atmosphere for photosynthesis?"
OPTIONS = ("Oxygen", "Carbon dioxide", "Nitrogen", "Helium")


class ChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert not tokenize and add_generation_prompt
        return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


class PlainTokenizer:
    chat_template = None


def test_paraphrase_prompt_carries_text_and_extra_instruction():
    messages = prompts.build_messages(prompts.MODE_PARAPHRASE, f"  {SOURCE} ", instruction="Use a formal register.")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"].endswith("Use a formal register.")
    assert messages[1]["content"].endswith(SOURCE)
    rendered = prompts.render_prompt(ChatTokenizer(), messages)
    assert rendered.endswith("<|im_start|>assistant\n") and SOURCE in rendered


def test_equivalent_question_prompt_shows_fixed_examples_then_the_question_with_its_options():
    messages = prompts.build_messages(prompts.MODE_EQUIVALENT_QUESTION, QUESTION, options=OPTIONS, correct_option_index=1)
    roles = [m["role"] for m in messages]
    assert roles == ["system"] + ["user", "assistant"] * len(prompts.QUESTION_EXAMPLES) + ["user"]
    for (question, options, rewording), user, assistant in zip(
        prompts.QUESTION_EXAMPLES, messages[1:-1:2], messages[2:-1:2], strict=True
    ):
        assert question in user["content"] and all(o in user["content"] for o in options)
        assert assistant["content"] == rewording
    last = messages[-1]["content"]
    assert QUESTION in last and "A. Oxygen\nB. Carbon dioxide\nC. Nitrogen\nD. Helium" in last
    assert "Correct answer" not in last  # a small model told the answer writes it into the rewording
    assert "never answer it" in messages[0]["content"].lower()
    rendered = prompts.render_prompt(ChatTokenizer(), messages)
    assert rendered.count("<|im_start|>assistant\n") == len(prompts.QUESTION_EXAMPLES) + 1
    with pytest.raises(ValueError):
        prompts.build_messages(prompts.MODE_EQUIVALENT_QUESTION, QUESTION, options=OPTIONS, correct_option_index=4)
    with pytest.raises(ValueError):
        prompts.build_messages("other", QUESTION)


def test_the_fixed_examples_pass_the_question_checks():
    """The worked examples must be what the cleaning keeps, or they would teach the model to be dropped."""
    for question, options, rewording in prompts.QUESTION_EXAMPLES:
        assert question_problem(rewording, question, options) == ("", "")


def test_question_token_budget_grows_with_the_question():
    assert prompts.question_token_budget("Why?") >= 24
    assert prompts.question_token_budget("x" * 400) > prompts.question_token_budget("x" * 100)


def test_plain_prompt_without_chat_template_ends_open():
    rendered = prompts.render_prompt(PlainTokenizer(), prompts.build_messages(prompts.MODE_PARAPHRASE, SOURCE))
    assert rendered.endswith("\nRewrite:") and SOURCE in rendered and "<|im_start|>" not in rendered
    assert not prompts.has_chat_template(PlainTokenizer()) and prompts.has_chat_template(ChatTokenizer())


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("The vote was delayed since many members were abroad.", "The vote was delayed since many members were abroad."),
        ('"The vote was delayed since many members were abroad."', "The vote was delayed since many members were abroad."),
        ("\u201cThe vote was delayed.\u201d", "The vote was delayed."),
        ("Sure! Here is a paraphrase of the text:\nThe vote was delayed.", "The vote was delayed."),
        ("Certainly. Here's the rewritten version: The vote was delayed.", "The vote was delayed."),
        ("Paraphrase: The vote was delayed.", "The vote was delayed."),
        ("**Paraphrased text:** The vote was delayed.", "The vote was delayed."),
        ("assistant\nThe vote was delayed.<|im_end|>", "The vote was delayed."),
        ("Assistant: The vote was delayed.", "The vote was delayed."),
        ("<|im_start|>assistant\nThe vote was delayed.<|im_end|>\n<|im_start|>user", "The vote was delayed."),
        ("The vote was delayed.\n\nThe original text is a simple sentence with a verb phrase.", "The vote was delayed."),
        ("The vote was delayed.\nNote: I kept every fact.", "The vote was delayed."),
        (
            f"{SOURCE}\n\nThe vote was delayed since many members were abroad.",
            "The vote was delayed since many members were abroad.",
        ),
        ("Here is how it works: members vote.", "Here is how it works: members vote."),
    ],
)
def test_strip_artefacts_paraphrase(raw, expected):
    assert strip_artefacts(raw, source=SOURCE, mode=prompts.MODE_PARAPHRASE) == expected


def test_strip_artefacts_keeps_paragraphs_of_a_multi_paragraph_source():
    source = "First paragraph here.\n\nSecond paragraph here."
    raw = "Para one reworded.\n\nPara two reworded.\n\nThis paraphrase keeps both paragraphs."
    assert strip_artefacts(raw, source=source) == "Para one reworded.\n\nPara two reworded."


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Reworded question: What gas do plants take in for photosynthesis?", "What gas do plants take in for photosynthesis?"),
        (
            "What gas do plants take in for photosynthesis?\nA. Oxygen\nB. Carbon dioxide",
            "What gas do plants take in for photosynthesis?",
        ),
        ("What gas do plants take in for photosynthesis?\nCorrect answer: B", "What gas do plants take in for photosynthesis?"),
        ("What gas do plants take in for photosynthesis?\nReworded answer:", "What gas do plants take in for photosynthesis?"),
        ("Question: What gas do plants take in?\n\nOptions: A, B", "What gas do plants take in?"),
    ],
)
def test_strip_artefacts_equivalent_question(raw, expected):
    assert strip_artefacts(raw, source=QUESTION, mode=prompts.MODE_EQUIVALENT_QUESTION) == expected


def test_option_like_lines_survive_in_paraphrase_mode():
    raw = "Steps to follow:\nA. wash\nB. dry"
    assert "A. wash" in strip_artefacts(raw, source="Wash and then dry it.\n\nx\n\ny", mode=prompts.MODE_PARAPHRASE)


@pytest.mark.parametrize(
    "raw, outcome",
    [
        ("The vote was delayed because members were abroad.", KEPT),
        ("", EMPTY),
        ("   \n ", EMPTY),
        ('""', EMPTY),
        ("Sure! Here is the paraphrase:", EMPTY),
        ("<|im_end|>", EMPTY),
        ("...!!!", EMPTY),
        (SOURCE, DEGENERATE),
        (SOURCE.upper().replace(".", ""), DEGENERATE),
        (f'"{SOURCE}"', DEGENERATE),
        ("the vote the vote the vote the vote the vote the vote", DEGENERATE),
        ("The vote was delayed. and and and and and and and and and and and and", DEGENERATE),
        ("hahahahahahahahahahahahahahaha", DEGENERATE),
    ],
)
def test_clean_candidate_outcomes(raw, outcome):
    result = clean_candidate(raw, source=SOURCE, mode=prompts.MODE_PARAPHRASE)
    assert result.outcome == outcome
    if outcome == EMPTY:
        assert result.text == ""


@pytest.mark.parametrize(
    "text, loop",
    [
        ("The committee will meet again next week to discuss the budget in detail.", False),
        ("Buffalo buffalo Buffalo buffalo buffalo", False),  # too short to call a loop
        ("I think that that is right, and that the vote should wait until members return.", False),
        ("yes yes yes yes yes yes yes yes", True),
        ("go to the shop go to the shop go to the shop go to the shop", True),
        ("The plan: the plan: the plan: the plan: the plan: the plan:", True),
        ("Mississippi is a long river in the United States of America.", False),
        ("abcabcabcabcabcabcabc", True),
    ],
)
def test_repetition_loop(text, loop):
    assert is_repetition_loop(text) is loop
