"""Process memory hygiene for the model services: hand freed heap back to the OS after bursts, bound malloc arenas.

glibc keeps freed memory in its arenas, so without this a burst leaves a model server at its peak size for good.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

#: mallopt parameter number of M_ARENA_MAX in glibc's malloc.h.
_M_ARENA_MAX = -8


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only (musl and macOS have none)
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def trim_heap() -> bool:
    """malloc_trim(0): return the free pages of every arena to the OS; False where the C library has no such call."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def limit_arenas(count: int) -> bool:
    """mallopt(M_ARENA_MAX, count): cap the malloc arenas threads create, so tokeniser and model threads do not each
    keep a private heap of freed memory. Affects arenas created from now on; False where unsupported."""
    libc = _libc()
    if libc is None or count < 1:
        return False
    ok = bool(libc.mallopt(_M_ARENA_MAX, count))
    if not ok:
        log.warning("mallopt(M_ARENA_MAX, %s) was refused", count)
    return ok
