"""Input checks shared by the services: Durations and Timestamps within usable ranges, text byte limits, blank texts.

Each failure is an InvalidArgument naming the field; durations and times come back as integer nanoseconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from typing import Any

import regex

from crucible.runtime.errors import InvalidArgument

NS_PER_S = 1_000_000_000
#: Longest duration any service accepts: 100 years (in nanoseconds it stays far inside int64, whatever rounding follows).
MAX_DURATION_S = 100 * 366 * 24 * 3600
#: Timestamps must fall between the Unix epoch and 2262-04-11, the range int64 nanoseconds can hold (SQLite INTEGER).
MAX_TIMESTAMP_S = (2**63 - 1) // NS_PER_S - 1


def duration_ns(value: Any, field: str, *, allow_zero: bool = True, max_seconds: int = MAX_DURATION_S) -> int:
    """A google.protobuf.Duration as nanoseconds in [0 (or 1), max_seconds]; InvalidArgument otherwise."""
    if value.seconds < 0 or value.nanos < 0:
        raise InvalidArgument.field(field, "must not be negative", reason="NEGATIVE_DURATION")
    if value.nanos >= NS_PER_S:
        raise InvalidArgument.field(field, "nanos must be below 1e9", reason="BAD_DURATION")
    if value.seconds > max_seconds:
        raise InvalidArgument.field(field, f"must be at most {max_seconds} s", reason="DURATION_TOO_LONG")
    ns: int = value.seconds * NS_PER_S + value.nanos
    if ns == 0 and not allow_zero:
        raise InvalidArgument.field(field, "must be positive", reason="BAD_DURATION")
    return ns


def timestamp_ns(value: Any, field: str) -> int:
    """A google.protobuf.Timestamp as nanoseconds since the epoch, between 1970 and 2262; InvalidArgument otherwise."""
    if not 0 <= value.nanos < NS_PER_S:
        raise InvalidArgument.field(field, "nanos must be within 0..999999999", reason="BAD_TIME")
    if not 0 <= value.seconds <= MAX_TIMESTAMP_S:
        raise InvalidArgument.field(field, "must be between 1970-01-01 and 2262-04-11", reason="BAD_TIME")
    ns: int = value.seconds * NS_PER_S + value.nanos
    return ns


# ---- texts --------------------------------------------------------------------------------------------------------

#: A character someone can see: not whitespace, not a format character (category Cf: zero-width space and joiners,
#: bidirectional marks and overrides, BOM, invisible operators, tags), not a control, not another default-ignorable
#: code point (variation selectors, Hangul fillers, ...) and not the braille blank. The `regex` module ships Unicode's
#: property tables, so the set follows the Unicode version it was built with instead of a hand-copied list.
_VISIBLE = regex.compile(r"[^\p{White_Space}\p{Cf}\p{Cc}\p{Default_Ignorable_Code_Point}\u2800]")


def is_blank(text: str) -> bool:
    """True when `text` shows nothing: only whitespace, zero-width, bidi, BOM, control or other invisible characters.

    Every model service treats such a text as empty (INVALID_ARGUMENT), so two of them can never be "equivalent".
    """
    return _VISIBLE.search(text) is None


def utf8_size(text: str, limit: int) -> int:
    """The UTF-8 size of `text`, exact unless it has more than `limit` characters (then that length, a lower bound
    already over the limit, is returned without encoding a byte)."""
    n = len(text)
    if n > limit or text.isascii():
        return n
    return len(text.encode("utf-8", "surrogatepass"))


@dataclasses.dataclass(frozen=True)
class TextLimits:
    """Byte limits on the text of one request, checked before any tokenising (bytes before tokens).

    `max_text_bytes` bounds each string field, `max_request_bytes` the sum over every string of the request;
    0 turns a limit off.
    """

    max_text_bytes: int = 0
    max_request_bytes: int = 0

    @property
    def enabled(self) -> bool:
        return bool(self.max_text_bytes or self.max_request_bytes)


def string_fields(message: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(field path, value) for every string in a protobuf message, nested messages and repeated fields included.

    Paths read like the errors name fields: `texts[5]`, `options[2]`, `items[3].choices[1]`, `pairs[0].first`.
    Map fields are walked as their values (`labels[key]`).
    """
    for field, value in message.ListFields():
        name = f"{prefix}{field.name}"
        if field.type == field.TYPE_STRING:
            if field.is_repeated:
                for i, item in enumerate(value):
                    yield f"{name}[{i}]", item
            else:
                yield name, value
        elif field.type == field.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                value_field = field.message_type.fields_by_name["value"]
                for key in value:
                    item = value[key]
                    if value_field.type == value_field.TYPE_STRING:
                        yield f"{name}[{key}]", item
                    elif value_field.type == value_field.TYPE_MESSAGE:
                        yield from string_fields(item, f"{name}[{key}].")
            elif field.is_repeated:
                for i, item in enumerate(value):
                    yield from string_fields(item, f"{name}[{i}].")
            else:
                yield from string_fields(value, f"{name}.")


def check_text_sizes(fields: Iterable[tuple[str, str]], limits: TextLimits) -> None:
    """INVALID_ARGUMENT naming the first string over `limits.max_text_bytes`, or the request when all its strings
    together exceed `limits.max_request_bytes`; nothing is encoded beyond what the check needs."""
    per_text, per_request = limits.max_text_bytes, limits.max_request_bytes
    if not (per_text or per_request):
        return
    total = 0
    for field, text in fields:
        size = utf8_size(text, per_text or per_request)
        if per_text and size > per_text:
            raise InvalidArgument.field(
                field,
                f"has {'at least ' if size == len(text) and not text.isascii() else ''}{size} UTF-8 bytes, more "
                f"than the limit of {per_text} per text",
                reason="TEXT_TOO_LARGE",
            )
        total += size
        if per_request and total > per_request:
            raise InvalidArgument(
                f"the request's texts add up to more than {per_request} UTF-8 bytes (limit per request; reached at "
                f"{field}); split the call",
                field_violations=[(field, f"the request's texts exceed {per_request} bytes")],
                reason="REQUEST_TOO_LARGE",
            )
