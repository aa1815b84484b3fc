"""Cleaning of generated rewrites: strip chat artefacts, prompt echoes and quotes; classify empty and degenerate ones.

Pure string work (no grpc, no torch); every rule is unit-tested in tests/unit/test_proposer_cleaning.py.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections.abc import Sequence

from crucible.proposer import prompts
from crucible.proposer.lexicon import AUXILIARIES, NEGATIONS
from crucible.proposer.prompts import MODE_EQUIVALENT_QUESTION
from crucible.proposer.structure import structure_change

KEPT = "kept"
EMPTY = "empty"
DEGENERATE = "degenerate"

# Special tokens and role markers a chat model may leave in its text.
_SPECIAL = re.compile(r"<\|[^|>]{1,40}\|>|</?s>|\[/?INST\]|<<SYS>>|<</SYS>>")
_END_OF_TURN = re.compile(r"<\|im_end\|>|<\|eot_id\|>|<\|endoftext\|>|<\|end\|>|</s>|<end_of_turn>")
_ROLE_LINE = re.compile(
    r"^\s*(?:#+\s*)?\**\s*(?:assistant|user|system|ai|bot|answer|response)\s*\**\s*:?\s*\**\s*$", re.IGNORECASE
)
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
    rest = text[len(source) :]
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


# ---- question rewrites: form checks ------------------------------------------------------------------------------
#
# A rewrite of a multiple-choice question must stay a question (or the same kind of open stem), must not answer it,
# name one of its options or list them, must not be a near-copy of the original and must keep about its length.
# These checks are shared by Propose (EQUIVALENT_QUESTION cleaning) and CheckEquivalence (the QUESTION method).

#: Reasons a candidate is dropped (Propose) or a pair is refused before any similarity (CheckEquivalence).
NOT_A_QUESTION = "not_a_question"
ANSWERS = "answers"
REPEATS_OPTIONS = "repeats_options"
NEAR_COPY = "near_copy"
LENGTH_CHANGE = "length_change"
MEANING_CHANGE = "meaning_change"
#: A content word added, dropped or swapped (the content alignment of alignment.py; needs the embedding model).
CONTENT_CHANGE = "content_change"
#: Every reason in reporting order (EMPTY and DEGENERATE apply to both modes, the rest to question rewrites).
DROP_REASONS = (
    EMPTY,
    DEGENERATE,
    NOT_A_QUESTION,
    ANSWERS,
    REPEATS_OPTIONS,
    NEAR_COPY,
    LENGTH_CHANGE,
    MEANING_CHANGE,
    CONTENT_CHANGE,
)

FORM_QUESTION = "question"  # ends with '?'
FORM_BLANK = "blank"  # a stem with a blank to fill ("___")
FORM_TASK = "task"  # an instruction ("Find the degree of ...")
FORM_OPEN = "open"  # an unfinished stem the options complete ("Delusions of grandeur are most characteristic of")
FORM_STATEMENT = "statement"  # a finished declarative sentence
#: Forms that ask for the answer: any of them may be reworded into any other.
ASKING_FORMS = frozenset({FORM_QUESTION, FORM_BLANK, FORM_TASK, FORM_OPEN})

_BLANK = re.compile(r"_{3,}|\.{4,}|\(\s*\)|\[\s*\]")
_TASK_VERBS = frozenset(
    [
        "find",
        "compute",
        "calculate",
        "determine",
        "identify",
        "select",
        "choose",
        "name",
        "give",
        "state",
        "evaluate",
        "simplify",
        "solve",
        "estimate",
        "predict",
        "explain",
        "describe",
        "list",
        "classify",
        "complete",
        "pick",
        "indicate",
        "match",
        "arrange",
    ]
)
_ASKING_OPENERS = (
    frozenset(["what", "which", "who", "whom", "whose", "when", "where", "why", "how"])
    | frozenset(["is", "are", "was", "were", "has", "have", "had"])
    | AUXILIARIES
)
_ANSWER_LEAD = re.compile(
    r"^\s*(?:the\s+)?(?:(?:correct|right|best|final)\s+)?(?:answer|option|choice|solution)\s*(?:is|would be|:)"
    r"|^\s*\((?-i:[A-Z])\)\s|^\s*(?-i:[A-Z])[.:)]\s|^\s*\(?(?-i:[A-Z])\)?[.:]?\s*$"
    r"|\b(?:option|choice|answer)\s+\(?(?-i:[A-Z])\)?(?:\b|$)",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:[.,]\d+)*(?:\s*%)?")
#: Words that carry a negation themselves: "NOT true" and "false" ask the same.
_NEGATIVE_WORDS = frozenset(["false", "incorrect", "untrue", "wrong", "invalid", "inaccurate"])
#: Opposites: a rewrite that swaps one for the other asks a different question.
_OPPOSITES = (
    ("most", "least"),
    ("largest", "smallest"),
    ("highest", "lowest"),
    ("maximum", "minimum"),
    ("greatest", "least"),
    ("true", "false"),
    ("correct", "incorrect"),
    ("increase", "decrease"),
    ("increases", "decreases"),
    ("before", "after"),
    ("first", "last"),
    ("above", "below"),
    ("more", "less"),
    ("greater", "smaller"),
    ("larger", "smaller"),
    ("higher", "lower"),
    ("longest", "shortest"),
    ("fastest", "slowest"),
    ("best", "worst"),
    ("strongest", "weakest"),
    ("always", "never"),
    ("all", "none"),
    ("inside", "outside"),
    ("positive", "negative"),
    ("accurate", "inaccurate"),
    ("valid", "invalid"),
    ("consistent", "inconsistent"),
    ("likely", "unlikely"),
    ("closest", "farthest"),
    ("nearest", "farthest"),
    ("begin", "end"),
    ("start", "end"),
    ("began", "ended"),
    ("absorb", "release"),
    ("oldest", "youngest"),
    ("earliest", "latest"),
    ("minimum", "maximum"),
)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.casefold().replace("\u2019", "'").replace("n't", " n't"))


def question_form(text: str) -> str:
    """The form of a question stem: FORM_QUESTION, FORM_BLANK, FORM_TASK, FORM_OPEN or FORM_STATEMENT."""
    stripped = text.strip().rstrip("\"'\u201d\u2019)*").strip()
    if not stripped:
        return FORM_STATEMENT
    if stripped.endswith("?"):
        return FORM_QUESTION
    if _BLANK.search(stripped):
        return FORM_BLANK
    last_sentence = re.split(r"(?<=[.!?])\s+", stripped)[-1]
    words = _words(last_sentence)
    if words and words[0] in _TASK_VERBS:
        return FORM_TASK
    if stripped.endswith((".", "!")):
        # A finished sentence; one that opens like a question ("What is the capital of France.") still asks.
        return (
            FORM_QUESTION
            if words and words[0] in _ASKING_OPENERS and words[0] not in ("is", "are", "was", "were", "has", "have", "had")
            else FORM_STATEMENT
        )
    return FORM_OPEN if stripped[-1].isalnum() or stripped.endswith((":", ",", "-", "\u2013", "\u2014")) else FORM_STATEMENT


def names_option(text: str, original: str, options: Sequence[str]) -> list[int]:
    """Indexes of options whose text appears (as whole words) in `text` but not in `original`."""
    found = []
    said = f" {' '.join(_words(text))} "
    before = f" {' '.join(_words(original))} "
    for index, option in enumerate(options):
        words = _words(option)
        if not words:
            continue
        phrase = f" {' '.join(words)} "
        if phrase in said and phrase not in before:
            found.append(index)
    return found


#: Letters two words must share at their start for an added word to echo an option ("nephrology" and
#: "Nephrolithiasis"); option words shorter than HINT_MIN_WORD are not considered.
HINT_PREFIX = 5
HINT_MIN_WORD = 6


def hints_option(text: str, original: str, options: Sequence[str]) -> list[int]:
    """Indexes of options that a word added by `text` echoes: it starts like one of the option's longer words, and no
    word of `original` does ("... kidney stones or nephrology?" for a question whose options include Nephrolithiasis)."""
    before = _words(original)
    added = [w for w in _words(text) if w not in before and len(w) >= HINT_PREFIX]
    found = []
    for index, option in enumerate(options):
        for word in _words(option):
            start = word[:HINT_PREFIX]
            echoed = any(w.startswith(start) for w in added) and not any(w.startswith(start) for w in before)
            if len(word) >= HINT_MIN_WORD and echoed:
                found.append(index)
                break
    return found


def word_similarity(first: str, second: str) -> float:
    """Similarity of two texts' word sequences in [0, 1] (difflib's ratio over normalised words)."""
    return difflib.SequenceMatcher(None, _words(first), _words(second), autojunk=False).ratio()


def _numbers(text: str) -> set[str]:
    return {re.sub(r"\s+", "", n).replace(",", "") for n in _NUMBER.findall(text)}


def meaning_change(original: str, rewrite: str) -> str:
    """Why `rewrite` cannot ask the same as `original` on its surface, or "" when nothing obvious changed:
    a number added or dropped, negation added or dropped, or a word swapped for its opposite."""
    if _numbers(original) != _numbers(rewrite):
        return f"numbers differ ({sorted(_numbers(original))} vs {sorted(_numbers(rewrite))})"
    first, second = _words(original), _words(rewrite)
    negations = sum(w in NEGATIONS for w in first), sum(w in NEGATIONS for w in second)
    negative = sum(w in _NEGATIVE_WORDS for w in first), sum(w in _NEGATIVE_WORDS for w in second)
    if (negations[0] + negative[0]) % 2 != (negations[1] + negative[1]) % 2:
        return "negation added or removed"
    if negations[0] != negations[1]:
        return ""  # a negation traded for a negative word ("NOT true" -> "false"): the swap below is that trade
    a, b = set(first), set(second)
    for x, y in _OPPOSITES:
        if (x in a and y in b and y not in a and x not in b) or (y in a and x in b and x not in a and y not in b):
            return f"'{x}'/'{y}' swapped"
    return ""


@dataclasses.dataclass(frozen=True)
class QuestionLimits:
    """Bounds of the question-rewrite checks: near-copy similarity and the allowed change of length in words."""

    #: A rewrite whose word-sequence similarity to the original reaches this is a near-copy (it rewords nothing).
    near_copy_similarity: float = 0.92
    #: Allowed word-count ratio of rewrite to original: within [1 / max_length_ratio, max_length_ratio] ...
    max_length_ratio: float = 2.0
    #: ... or within this many words of the original (short questions may change a lot relatively).
    length_slack_words: int = 6


def question_problem(
    rewrite: str, original: str, options: Sequence[str] = (), limits: QuestionLimits = QuestionLimits(), *, near_copy: bool = True
) -> tuple[str, str]:
    """(reason, detail) when `rewrite` is not a valid rewording of the question stem `original`, else ("", "").

    Checked in order: it lists the options (REPEATS_OPTIONS), it answers or names an option (ANSWERS), its form does
    not ask what the original asks (NOT_A_QUESTION: a statement for a question), its length is out of bounds
    (LENGTH_CHANGE), it changes numbers, negation or an opposite pair or moves content across a clause, a negation
    or a stem's subject (MEANING_CHANGE, see structure.py), and, when `near_copy`, it
    barely differs from the original (NEAR_COPY).
    """
    named = names_option(rewrite, original, options)
    letter_lines = sum(bool(_OPTION_LINE.match(line)) for line in rewrite.split("\n"))
    if len(named) >= 2 or letter_lines >= 2:
        return REPEATS_OPTIONS, f"lists options {named or letter_lines}"
    if _ANSWER_LEAD.search(rewrite):
        return ANSWERS, "gives an answer or names an option letter"
    if named:
        return ANSWERS, f"names option {prompts.option_letter(named[0])}"
    hinted = hints_option(rewrite, original, options)
    if hinted:
        return ANSWERS, f"adds a word that echoes option {prompts.option_letter(hinted[0])}"
    before, after = question_form(original), question_form(rewrite)
    if (before in ASKING_FORMS) != (after in ASKING_FORMS):
        return NOT_A_QUESTION, f"a {after} for a {before}"
    n_before, n_after = len(_words(original)), len(_words(rewrite))
    if abs(n_after - n_before) > limits.length_slack_words and not (
        n_before / limits.max_length_ratio <= n_after <= n_before * limits.max_length_ratio
    ):
        return LENGTH_CHANGE, f"{n_after} words for {n_before}"
    changed = meaning_change(original, rewrite) or structure_change(original, rewrite, open_stem=before == FORM_OPEN)
    if changed:
        return MEANING_CHANGE, changed
    if near_copy and word_similarity(original, rewrite) >= limits.near_copy_similarity:
        return NEAR_COPY, f"word similarity {word_similarity(original, rewrite):.2f}"
    return "", ""


def clean_question(raw: str, *, source: str, options: Sequence[str], limits: QuestionLimits = QuestionLimits()) -> Cleaned:
    """Clean one EQUIVALENT_QUESTION generation and judge it: EMPTY or DEGENERATE as clean_candidate, else the first
    reason of question_problem, else KEPT."""
    cleaned = clean_candidate(raw, source=source, mode=MODE_EQUIVALENT_QUESTION)
    if cleaned.outcome != KEPT:
        return cleaned
    reason, _ = question_problem(cleaned.text, source, options, limits)
    return Cleaned(cleaned.text, reason or KEPT)
