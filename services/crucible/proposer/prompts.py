"""Prompts for the rewriter: the PARAPHRASE and EQUIVALENT_QUESTION instructions, rendered with the chat template.

Pure string work (no grpc, no torch): `build_messages` writes the conversation, `render_prompt` turns it into text.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

MODE_PARAPHRASE = "paraphrase"
MODE_EQUIVALENT_QUESTION = "equivalent_question"

PARAPHRASE_SYSTEM = (
    "You rewrite text in different words. Keep the meaning and every fact; add nothing and leave nothing out. "
    "Reply with the rewritten text only: no preamble, no quotes, no explanation."
)
QUESTION_SYSTEM = (
    "You reword exam questions. Say the same question in other words. Keep every fact, name and number, and keep "
    "what is asked. Never answer it, never add an option, never list the options."
)

#: Fixed worked examples shown as earlier chat turns (question, options, rewording). They cover a direct question, an
#: unfinished stem the options complete, a "which of the following" question and a fill-in blank; each rewording keeps
#: the meaning, asks rather than states, and names no option. General knowledge, so they favour no benchmark subject.
QUESTION_EXAMPLES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("Which planet is closest to the Sun?", ("Venus", "Earth", "Mercury", "Mars"), "Which planet lies nearest to the Sun?"),
    (
        "The process by which plants make food from sunlight is called",
        ("respiration", "photosynthesis", "digestion", "osmosis"),
        "What is the process through which plants produce food using sunlight called?",
    ),
    (
        "Which of the following animals is a mammal?",
        ("Shark", "Dolphin", "Trout", "Octopus"),
        "Which one of these animals belongs to the mammals?",
    ),
    (
        "According to Newton, an object at rest stays at rest unless acted on by _____.",
        ("gravity", "a net force", "friction", "mass"),
        "In Newton's view, an object at rest remains at rest unless what acts on it?",
    ),
)


def option_letter(index: int) -> str:
    """The letter of option `index` (0 -> 'A')."""
    return string.ascii_uppercase[index]


def _question_turn(question: str, options: Sequence[str]) -> str:
    listed = "\n".join(f"{option_letter(i)}. {option.strip()}" for i, option in enumerate(options))
    return (
        f"Question: {question.strip()}\n\nIts options (do not repeat them):\n{listed}\n\nReword the question in different words."
    )


def question_token_budget(question: str) -> int:
    """Default max_new_tokens for rewording `question`: room for twice its length (about 4 characters a token) and
    a margin; longer rewordings are dropped as LENGTH_CHANGE anyway, so generating them wastes time."""
    return 24 + len(question) // 2


def build_messages(
    mode: str,
    text: str,
    *,
    options: Sequence[str] = (),
    correct_option_index: int | None = None,
    instruction: str = "",
) -> list[dict[str, str]]:
    """The chat messages asking for one rewrite of `text` in `mode` (with an optional extra instruction).

    EQUIVALENT_QUESTION: a system instruction, the fixed QUESTION_EXAMPLES as earlier user/assistant turns, then the
    question with its options shown as context (lettered). `correct_option_index` is checked but not shown.
    """
    extra = f" {instruction.strip()}" if instruction.strip() else ""
    if mode == MODE_PARAPHRASE:
        return [
            {"role": "system", "content": PARAPHRASE_SYSTEM + extra},
            {"role": "user", "content": f"Paraphrase this text:\n{text.strip()}"},
        ]
    if mode == MODE_EQUIVALENT_QUESTION:
        if not options or correct_option_index is None or not 0 <= correct_option_index < len(options):
            raise ValueError("EQUIVALENT_QUESTION needs options and a correct_option_index within them")
        # The correct answer is not shown: a small model told it tends to write it into the rewording.
        messages = [{"role": "system", "content": QUESTION_SYSTEM + extra}]
        for example, example_options, rewording in QUESTION_EXAMPLES:
            messages.append({"role": "user", "content": _question_turn(example, example_options)})
            messages.append({"role": "assistant", "content": rewording})
        messages.append({"role": "user", "content": _question_turn(text, options)})
        return messages
    raise ValueError(f"unknown mode {mode!r}")


def has_chat_template(tokenizer: Any) -> bool:
    """True when the tokenizer carries a chat template (instruction-tuned models)."""
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, str]]) -> str:
    """The exact prompt text: the chat template with the assistant turn opened, or plain text for a base model.

    Plain text ends with an open "Rewrite:" line so that a base model continues with the rewrite.
    """
    if has_chat_template(tokenizer):
        return str(tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True))
    parts = [message["content"].strip() for message in messages]
    return "\n\n".join(parts) + "\nRewrite:"


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a rendered prompt; a chat template already holds its special tokens, so none are added then."""
    return list(tokenizer(prompt, add_special_tokens=not has_chat_template(tokenizer))["input_ids"])
