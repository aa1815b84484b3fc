"""Bounds on every input of the cost API: lengths and characters of strings, ranges of amounts, sizes of lists.

Checked before any work, so an absurd price cannot make spend infinite and a megabyte scope never reaches a query.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence

from crucible.runtime.errors import InvalidArgument

#: Highest hourly price accepted anywhere (USD per instance-hour). The dearest catalog row is about $64/h (8 x B200);
#: the bound leaves two orders of magnitude and keeps price x the longest interval (about 876,000 h) finite.
MAX_PRICE_USD_PER_HOUR = 10_000.0
#: Highest amount of money accepted in a request (budget limit, estimated or maximum cost), in USD.
MAX_USD = 1e9
#: Highest storage (GB-hours) or egress (GB) quantity accepted in an estimate.
MAX_QUANTITY_GB = 1e9
#: Highest memory filter (GiB) accepted in a requirement.
MAX_MEMORY_GIB = 1e6

#: Longest scope, `kind:name` (characters; scopes are ASCII).
MAX_SCOPE = 128
#: Longest job id (characters).
MAX_JOB_ID = 256
#: Longest budget id (server-made ids are 16 characters).
MAX_BUDGET_ID = 64
#: Longest offer id, `{provider}/{instance_type}/{region}/{on-demand|spot}`.
MAX_OFFER_ID = 512
#: Longest idempotency key.
MAX_REQUEST_ID = 128
#: Longest budget display name (characters).
MAX_DISPLAY_NAME = 200
#: Longest GPU or provider name in a filter.
MAX_NAME = 64
#: Most GPU or provider names in one filter.
MAX_NAMES = 64
#: Longest page token (server-made tokens are under 100 characters).
MAX_PAGE_TOKEN = 256


def text(value: str, field: str, max_chars: int, *, required: bool = False) -> str:
    """A string of at most `max_chars` characters without control or format characters; InvalidArgument otherwise.

    The length is checked first, on the raw value, so an oversized field costs nothing more.
    """
    if len(value) > max_chars:
        raise InvalidArgument.field(field, f"at most {max_chars} characters, got {len(value)}", reason="FIELD_TOO_LONG")
    if required and not value:
        raise InvalidArgument.field(field, "required", reason="MISSING_FIELD")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn"):
            raise InvalidArgument.field(
                field,
                f"must not contain control, format or unassigned characters (found U+{ord(ch):04X})",
                reason="BAD_CHARACTER",
            )
    return value


def names(values: Sequence[str], field: str) -> Sequence[str]:
    """A list of at most MAX_NAMES names, each checked with `text` (empty entries are the caller's concern)."""
    if len(values) > MAX_NAMES:
        raise InvalidArgument.field(field, f"at most {MAX_NAMES} entries, got {len(values)}", reason="TOO_MANY_NAMES")
    for i, value in enumerate(values):
        text(value, f"{field}[{i}]", MAX_NAME)
    return values


def amount(value: float, field: str, maximum: float, *, positive: bool = False) -> float:
    """A finite number in [0, maximum] (or (0, maximum] when `positive`); InvalidArgument naming `field` otherwise."""
    low = "> 0" if positive else ">= 0"
    if not math.isfinite(value) or value < 0 or (positive and value == 0) or value > maximum:
        raise InvalidArgument.field(
            field, f"must be a finite number {low} and at most {maximum:g}, got {value!r}", reason="AMOUNT_OUT_OF_RANGE"
        )
    return value
