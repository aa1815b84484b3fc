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
    "You reword multiple-choice questions. The reworded question must be semantically equivalent to the original: "
    "same meaning, nothing added or omitted. The answer options stay exactly as they are and the correct answer "
    "must not change. Reply with the reworded question only, without the options: no preamble, no quotes, no "
    "explanation."
)


def option_letter(index: int) -> str:
    """The letter of option `index` (0 -> 'A')."""
    return string.ascii_uppercase[index]


def build_messages(
    mode: str,
    text: str,
    *,
    options: Sequence[str] = (),
    correct_option_index: int | None = None,
    instruction: str = "",
) -> list[dict[str, str]]:
    """The system and user messages asking for one rewrite of `text` in `mode` (with an optional extra instruction).

    EQUIVALENT_QUESTION shows the options with letters and names the correct one, which the rewrite must keep.
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
        listed = "\n".join(f"{option_letter(i)}. {option.strip()}" for i, option in enumerate(options))
        correct = f"{option_letter(correct_option_index)}. {options[correct_option_index].strip()}"
        user = (
            f"Reword this question so that it means exactly the same and its correct answer stays {correct}.\n"
            f"Question: {text.strip()}\nOptions:\n{listed}\nCorrect answer: {correct}\n"
            "Reworded question:"
        )
        return [{"role": "system", "content": QUESTION_SYSTEM + extra}, {"role": "user", "content": user}]
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
