"""Opaque page tokens for the cost service's list methods: an offset bound to the filters it was issued for.

A token used with different filters, or one that was tampered with, is rejected with INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import hashlib
import json

from crucible.runtime.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def page_size(value: int, field: str = "page_size") -> int:
    """0 means the default (100), above 1000 means 1000, negative is InvalidArgument."""
    if value < 0:
        raise InvalidArgument.field(field, f"must not be negative, got {value}", reason="BAD_PAGE_SIZE")
    return min(value or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def filter_key(data: bytes) -> str:
    """A short fingerprint of the filters a listing was made with."""
    return hashlib.sha256(data).hexdigest()[:16]


def encode_token(offset: int, key: str) -> str:
    """The token for the page starting at `offset` of the listing with filter fingerprint `key`."""
    return base64.urlsafe_b64encode(json.dumps({"o": offset, "k": key}).encode()).decode().rstrip("=")


def decode_token(token: str, key: str, field: str = "page_token") -> int:
    """The offset in `token` ('' -> 0); InvalidArgument when malformed or issued for other filters."""
    if not token:
        return 0
    try:
        payload = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset, issued_for = payload["o"], payload["k"]
    except (ValueError, KeyError, TypeError):
        raise InvalidArgument.field(field, "malformed page token", reason="BAD_PAGE_TOKEN") from None
    if not isinstance(offset, int) or offset < 0:
        raise InvalidArgument.field(field, "malformed page token", reason="BAD_PAGE_TOKEN")
    if issued_for != key:
        raise InvalidArgument.field(field, "page token was issued for different filters", reason="PAGE_TOKEN_MISMATCH")
    return offset
