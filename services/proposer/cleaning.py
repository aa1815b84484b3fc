"""Cleaning of generated rewrites: strip chat artefacts, prompt echoes and quotes; classify empty and degenerate ones.

Pure string work (no grpc, no torch); every rule is unit-tested in tests/unit/test_proposer_cleaning.py.
"""

from __future__ import annotations

import dataclasses
import re

from crucible.proposer.prompts import MODE_EQUIVALENT_QUESTION

KEPT = "kept"
EMPTY = "empty"
DEGENERATE = "degenerate"

# Special tokens and role markers a chat model may leave in its text.
_SPECIAL = re.compile(r"<\|[^|>]{1,40}\|>|</?s>|\[/?INST\]|<<SYS>>|<</SYS>>")
_END_OF_TURN = re.compile(r"<\|im_end\|>|<\|eot_id\|>|<\|endoftext\|>|<\|end\|>|</s>|<end_of_turn>")
_ROLE_LINE = re.compile(r"^\s*(?:#+\s*)?\**\s*(?:assistant|user|system|ai|bot|answer|response)\s*\**\s*:?\s*\**\s*$", re.IGNORECASE)
_ROLE_PREFIX = re.compile(r"^\s*(?:assistant|ai|bot)\s*:\s*", re.IGNORECASE)
# A leading courtesy ("Sure!", "Certainly.") and a label line ("Here is a paraphrase:", "Reworded question:").
_COURTESY = re.compile(r"^\s*(?:sure|certainly|of course|okay|ok|absolutely|great)\b[!,.]*\s*", re.IGNORECASE)
_LABEL = re.compile(
    r"^\s*\**\s*(?:(?:here(?:'s| is| are)|below is|this is)\b[^:\n]{0,60}?"
    r"(?:paraphras|rewrit|reword|rephras|version|question|text|sentence|passage)[^:\n]{0,30}"
    r"|(?:the\s+)?(?:paraphrased?|rewritten|reworded|rephrased|revised|new|original)?\s*"
    r"(?:paraphrase|rewrite|rewording|rephrasing|version|text|question|sentence|passage)s?(?:\s*\d+)?)"
    r"\s*\**\s*:\s*\**\s*",
    re.IGNORECASE,
)
_OPTION_LINE = re.compile(r"^\s*\(?[A-Z][.)]\s+\S")
_TRAILER_LINE = re.compile(
    r"^\s*\**\s*(?:options?|choices?|answer|correct answer|the correct answer|note|explanation|original)\b[^:\n]{0,40}:",
    re.IGNORECASE,
)
_DANGLING_LABEL = re.compile(r"^\s*\**[^\n:]{1,40}:\s*\**\s*$")
_QUOTES = (('"', '"'), ("'", "'"), ("\u201c", "\u201d"), ("\u2018", "\u2019"), ("\u00ab", "\u00bb"), ("`", "`"))
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclasses.dataclass(frozen=True)
class Cleaned:
    """A cleaned candidate: `text` when kept, and the outcome (KEPT, EMPTY or DEGENERATE)."""

    text: str
    outcome: str


def _normalise(text: str) -> str:
    return " ".join(_WORD.findall(text.casefold()))


def _strip_quotes(text: str) -> str:
    changed = True
    while changed and len(text) >= 2:
        changed = False
        for left, right in _QUOTES:
            if text.startswith(left) and text.endswith(right) and left not in text[1:-1] and right not in text[1:-1]:
                text = text[1:-1].strip()
                changed = True
    return text.strip("*").strip()


def _paragraph_count(text: str) -> int:
    return max(1, len([p for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]))


def _strip_echo(text: str, source: str) -> str:
    """Drop an echo of the source text that precedes the rewrite (the source, then a separator, then more)."""
    source = source.strip()
    if not source or not text.startswith(source):
        return text
    rest = text[len(source):]
    if not rest.strip():
        return text  # the whole output is the source: degenerate, judged later
    return rest.lstrip(" \t\n-:>=\u2192").strip()


def strip_artefacts(raw: str, *, source: str = "", mode: str = "") -> str:
    """The rewrite inside a raw generation: no special tokens, role tags, courtesies, labels, echoes or quotes.

    In EQUIVALENT_QUESTION mode the question stem is kept and echoed options, answers and notes are cut off.
    Multi-paragraph rewrites keep their paragraphs; trailing notes and explanations are cut off.
    """
    text = _END_OF_TURN.split(raw, maxsplit=1)[0]  # anything after the end of the turn is another turn
    text = _SPECIAL.sub("", text).replace("\r\n", "\n").strip()
    lines = text.split("\n")
    while lines and (not lines[0].strip() or _ROLE_LINE.match(lines[0])):
        lines.pop(0)
    text = "\n".join(lines).strip()
    text = _ROLE_PREFIX.sub("", text)
    text = _COURTESY.sub("", text)
    for _ in range(3):  # "Sure! Here is the paraphrase: Paraphrase: ..." peels in a few passes
        stripped = _LABEL.sub("", text, count=1).strip()
        if stripped == text:
            break
        text = stripped
    text = _strip_echo(text, source)
    kept: list[str] = []
    for line in text.split("\n"):
        if _TRAILER_LINE.match(line) or (mode == MODE_EQUIVALENT_QUESTION and _OPTION_LINE.match(line)):
            break
        kept.append(line)
    while kept and (not kept[-1].strip() or _DANGLING_LABEL.match(kept[-1])):
        kept.pop()  # "Reworded answer:" left open at the end
    text = "\n".join(kept).strip()
    # A rewrite has as many paragraphs as its source; more is commentary ("The original text is ...").
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    text = "\n\n".join(paragraphs[: _paragraph_count(source)]).strip()
    if mode == MODE_EQUIVALENT_QUESTION:
        text = _LABEL.sub("", text, count=1).strip()
    text = _strip_quotes(text)
    return "" if _COURTESY.fullmatch(text) else text


def is_repetition_loop(text: str, *, min_repeats: int = 3, max_period_words: int = 10, min_coverage: float = 0.5) -> bool:
    """True when a cycle of 1..`max_period_words` words repeats back to back `min_repeats` times or more and the
    run covers at least `min_coverage` of the words; a character cycle is checked the same way for text without
    spaces (e.g. "hahahahaha").
    """
    words = _WORD.findall(text.casefold())
    if len(words) >= 2 * min_repeats and _dominated_by_cycle(words, min_repeats, max_period_words, min_coverage):
        return True
    if len(words) > 2:
        return False
    letters = [c for c in text.casefold() if not c.isspace()]
    return len(letters) >= 12 and _dominated_by_cycle(letters, 4, 20, 0.6)


def _dominated_by_cycle(items: list[str], min_repeats: int, max_period: int, min_coverage: float) -> bool:
    n = len(items)
    for period in range(1, min(max_period, n // min_repeats) + 1):
        start = 0
        while start + period * min_repeats <= n:
            repeats = 1
            while start + (repeats + 1) * period <= n and (
                items[start + repeats * period : start + (repeats + 1) * period] == items[start : start + period]
            ):
                repeats += 1
            if repeats >= min_repeats and repeats * period >= min_coverage * n:
                return True
            start += max(1, (repeats - 1) * period) if repeats > 1 else 1
    return False


def clean_candidate(raw: str, *, source: str, mode: str = "") -> Cleaned:
    """Clean one raw generation and judge it: EMPTY when nothing with a letter or digit is left, DEGENERATE when
    it equals `source` ignoring case, punctuation and whitespace, or is dominated by a repetition loop.
    """
    text = strip_artefacts(raw, source=source, mode=mode)
    if not _WORD.search(text):
        return Cleaned("", EMPTY)
    if _normalise(text) == _normalise(source) or is_repetition_loop(text):
        return Cleaned(text, DEGENERATE)
    return Cleaned(text, KEPT)
