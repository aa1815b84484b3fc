"""Structure checks of a question rewording: the same content words in another arrangement that asks something else
(a clause's content moved across "when"/"if"/"by", a negation moved from "is not" to "does not", a stem made into "what is X?").

Pure strings; `structure_change` is one of the form checks of `cleaning.question_problem`. The content alignment
cannot see these: every word is still there.
"""

from __future__ import annotations

import re

from crucible.proposer.lexicon import AUXILIARIES, NEGATIONS, is_content, stem

_TOKEN = re.compile(r"\w+(?:'\w+)?|[,;:?!.]")
#: Words that open a clause which holds a condition, a time or a cause: its content must stay inside it.
SUBORDINATORS = frozenset(
    ["when", "whenever", "if", "unless", "because", "since", "while", "until", "once", "after", "before", "whereas", "by"]
)
_CLAUSE_ENDS = frozenset([",", ";", ":", "?", "!", "."])
_COPULAS = frozenset(["is", "are", "was", "were", "be", "been", "being", "isn't", "aren't", "wasn't", "weren't"])
#: The auxiliaries, and the stems "ca"/"wo" left when "can't"/"won't" lose their "n't".
_AUXILIARIES = AUXILIARIES | frozenset(["ca", "wo"])
_ASKING = frozenset(["what", "which", "who"])
#: A clause that says "it" for a word the main clause now names still has that word ("if it is abducted").
_PRONOUNS = frozenset(["it", "its", "they", "them", "their", "he", "she", "him", "her", "this", "these", "those"])


def _tokens(text: str) -> list[str]:
    """Words (lower case, "n't" split off as its own word) and clause punctuation of `text`."""
    return _TOKEN.findall(text.casefold().replace("\u2019", "'").replace("n't", " n't"))


def _content(tokens: list[str]) -> set[str]:
    return {stem(t) for t in tokens if t not in _CLAUSE_ENDS and is_content(t) and t not in NEGATIONS}


def _clause(tokens: list[str], marker: str) -> tuple[list[str], list[str]]:
    """(the words of the first clause `marker` opens, the words of the rest); `marker` must be in `tokens`."""
    start = tokens.index(marker) + 1
    end = next((k for k in range(start, len(tokens)) if tokens[k] in _CLAUSE_ENDS), len(tokens))
    return tokens[start:end], tokens[: start - 1] + tokens[end:]


def clause_swap(original: str, rewrite: str) -> str:
    """Why `rewrite` moves content across a subordinate clause of `original` ("A voltage is induced when the field
    changes" -> "What happens to the field when a voltage is induced?"), else "". Only markers both texts have count."""
    first, second = _tokens(original), _tokens(rewrite)
    for marker in sorted(SUBORDINATORS & set(first) & set(second)):
        (clause, rest), (clause2, rest2) = _clause(first, marker), _clause(second, marker)
        inside, outside, inside2, outside2 = _content(clause), _content(rest), _content(clause2), _content(rest2)
        moved_out = (inside - outside) & (outside2 - inside2)
        moved_in = (outside - inside) & (inside2 - outside2)
        pronoun = any(t in _PRONOUNS for t in clause2)
        if (moved_out and moved_in) or (moved_out and not pronoun):
            said = [t for t in dict.fromkeys(first) if stem(t) in (moved_out or moved_in)]
            words = ", ".join(f"'{w}'" for w in said)
            where = "out of" if moved_out else "into"
            return f"moves {words} {where} the '{marker}' clause (cause and condition swapped)"
    return ""


def _negations(tokens: list[str]) -> list[tuple[str, list[str]]]:
    """(kind, the words it negates up to the clause's end) per negation: 'copula' for "is not X" (not a member of a
    class), 'verb' for "does not X"/"cannot X" (does not do X)."""
    found = []
    for k, token in enumerate(tokens):
        kind = ""
        if token == "cannot":
            kind = "verb"
        elif token in ("not", "n't") and k:
            kind = "copula" if tokens[k - 1] in _COPULAS else "verb" if tokens[k - 1] in _AUXILIARIES else ""
        if kind:
            end = next((j for j in range(k + 1, len(tokens)) if tokens[j] in _CLAUSE_ENDS), len(tokens))
            found.append((kind, tokens[k + 1 : end]))
    return found


def negation_moved(original: str, rewrite: str) -> str:
    """Why `rewrite` negates a verb made from a word of what `original` negates as a class ("is not a block cipher
    operating mode" -> "does not operate on block ciphers": not being such a mode is not the same as not operating),
    else "". A new verb ("is not a property of" -> "does not belong to") is left to the content alignment."""
    classes = [words for kind, words in _negations(_tokens(original)) if kind == "copula"]
    doings = [words for kind, words in _negations(_tokens(rewrite)) if kind == "verb"]
    if not classes or not doings or any(kind == "copula" for kind, _ in _negations(_tokens(rewrite))):
        return ""
    negated = {stem(w) for words in classes for w in words if is_content(w)}
    for words in doings:
        verb = next((w for w in words if is_content(w)), "")
        if verb and stem(verb) in negated:
            return f"negates '{verb}' where the original negates a class ('is not ...')"
    return ""


def asks_identity(original: str, rewrite: str) -> str:
    """Why `rewrite` asks what the subject of an unfinished stem is ("The infraorbital nerve" -> "Which one of these
    answers is the infraorbital nerve?"), else "". A stem that ends on a content word is completed by its options
    with a predicate ("... is a branch of ..."); asking what the subject is asks another question."""
    first, second = _tokens(original), _tokens(rewrite)
    words = [t for t in first if t not in _CLAUSE_ENDS]
    if not words or not is_content(words[-1]) or not second or second[0] not in _ASKING:
        return ""
    copulas = [k for k, t in enumerate(second) if t in _COPULAS]
    if not copulas:
        return ""
    start = copulas[-1] + 1
    end = next((k for k in range(start, len(second)) if second[k] in _CLAUSE_ENDS), len(second))
    subject, asked, rest = _content(second[start:end]), _content(second[: copulas[-1]]), _content(second[end:])
    stems = _content(first)
    if subject and subject <= stems and not asked & stems and stems <= subject | rest:
        return "asks what the stem's subject is; the options complete a sentence about it"
    return ""


def structure_change(original: str, rewrite: str, *, open_stem: bool) -> str:
    """The first structure problem of `rewrite` against `original` (`open_stem`: the original is an unfinished stem
    the options complete), or ""."""
    return (
        clause_swap(original, rewrite)
        or negation_moved(original, rewrite)
        or (asks_identity(original, rewrite) if open_stem else "")
    )
