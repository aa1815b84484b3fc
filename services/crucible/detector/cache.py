"""Result caches of the detector: an in-memory LRU and an optional SQLite store that survives restarts.

Keys are (model fingerprint, text): the fingerprint covers every model identity and setting that changes a score.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path

from crucible.detector.core import RawScores
from crucible.runtime.sqlite import open_database
from crucible.runtime.statefile import OnCorrupt


def cache_key(fingerprint: str, text: str) -> str:
    """The key of one text's result under one model set-up (a SHA-256, so keys stay small for long texts)."""
    return hashlib.sha256(f"{fingerprint}\x00{text}".encode()).hexdigest()


class LruCache:
    """Bounded in-memory map key -> RawScores, least recently used evicted first; capacity 0 disables it."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[str, RawScores] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str) -> RawScores | None:
        """The cached result, marked most recently used, or None."""
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: str, value: RawScores) -> None:
        """Store a result, evicting the oldest beyond capacity."""
        if self.capacity <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)


class SqliteCache:
    """Results on disk in one SQLite table (WAL mode), shared by the event loop and the model thread under a lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # A pure cache: every entry can be recomputed from the model, so a corrupt or truncated file is moved aside
        # (kept for inspection, with a warning) and the detector starts with an empty cache instead of refusing to start.
        self._db = open_database(
            self.path,
            field="cache_path",
            what="detector result cache",
            schema="CREATE TABLE IF NOT EXISTS detections (key TEXT PRIMARY KEY, scores TEXT NOT NULL)",
            on_corrupt=OnCorrupt.MOVE_ASIDE,
        )

    def get_many(self, keys: Sequence[str]) -> dict[str, RawScores]:
        """The stored results among `keys` (missing keys are absent from the answer)."""
        out: dict[str, RawScores] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                part = list(keys[start : start + 500])
                marks = ",".join("?" * len(part))
                rows = self._db.execute(f"SELECT key, scores FROM detections WHERE key IN ({marks})", part).fetchall()
                out.update((k, RawScores.from_json(v)) for k, v in rows)
        return out

    def put_many(self, items: Iterable[tuple[str, RawScores]]) -> None:
        """Insert or replace results in one transaction."""
        rows = [(k, v.to_json()) for k, v in items]
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO detections (key, scores) VALUES (?, ?)", rows)
            self._db.execute("COMMIT")

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM detections").fetchone()[0])

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
