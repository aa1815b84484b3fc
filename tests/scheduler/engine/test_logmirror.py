"""Log mirroring helpers (engine/logmirror.py)."""

from __future__ import annotations

from crucible.scheduler.engine.logmirror import utf8_cut


def test_utf8_cut() -> None:
    text = "añ€😀".encode()
    assert utf8_cut(text) == len(text)
    assert utf8_cut(text[:-1]) == len(text) - 4
    assert utf8_cut(text[:2]) == 1  # 'a' then half of 'ñ'
    assert utf8_cut(b"\xff\xfe") == 2  # invalid bytes are not held back
