"""When a detection's probability can be trusted: enough scored tokens, and a text that is not mostly invisible.

Pure functions of a text and its token count (no model, no gRPC): the pipeline applies them to every detection.
"""

from __future__ import annotations

import dataclasses

import regex

#: Default fewest scored tokens for a reliable probability. On the detect data (SmolLM2-135M-Instruct, texts cut to
#: N tokens) the criterion's AUROC is near chance below it; see the detector README ("Short texts").
DEFAULT_MIN_RELIABLE_TOKENS = 32
#: Default largest share of invisible characters among a text's non-whitespace characters.
DEFAULT_MAX_INVISIBLE_FRACTION = 0.02

REASON_NONE = ""
REASON_TOO_FEW_TOKENS = "too_few_tokens"
REASON_INVISIBLE_CHARACTERS = "invisible_characters"

# Invisible but not whitespace: format characters (zero-width space/joiners, bidi marks and overrides, BOM, tags,
# invisible operators), other default-ignorable code points (variation selectors, Hangul fillers) and the braille
# blank; the same set that crucible.runtime.validation.is_blank treats as showing nothing.
_INVISIBLE = regex.compile(r"[\p{Cf}\p{Default_Ignorable_Code_Point}\u2800]")
_WHITESPACE = regex.compile(r"\p{White_Space}")


@dataclasses.dataclass(frozen=True)
class Reliability:
    """Whether a detection's probabilities mean what they say; when not, a reason code and a sentence."""

    reliable: bool
    reason: str = REASON_NONE
    detail: str = ""


RELIABLE = Reliability(True)


def invisible_fraction(text: str) -> float:
    """Share of the non-whitespace characters of `text` that are invisible (0.0 for a text of only whitespace)."""
    invisible = len(_INVISIBLE.findall(text))
    visible_or_invisible = len(text) - len(_WHITESPACE.findall(text))
    return invisible / visible_or_invisible if visible_or_invisible else 0.0


def assess(text: str, tokens_scored: int, *, min_tokens: int, max_invisible_fraction: float) -> Reliability:
    """Reliable unless fewer than `min_tokens` tokens were scored or too much of the text is invisible."""
    if tokens_scored < min_tokens:
        return Reliability(
            False,
            REASON_TOO_FEW_TOKENS,
            f"{tokens_scored} token(s) scored; a reliable probability needs at least {min_tokens}",
        )
    share = invisible_fraction(text)
    if share > max_invisible_fraction:
        return Reliability(
            False,
            REASON_INVISIBLE_CHARACTERS,
            f"{share:.1%} of the non-whitespace characters are invisible (zero-width, bidi or other format "
            f"characters; at most {max_invisible_fraction:.1%} for a reliable probability)",
        )
    return RELIABLE
