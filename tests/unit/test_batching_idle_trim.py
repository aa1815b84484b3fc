"""A call submitted while an idle batcher hands memory back (trim_heap in the model thread) is served, not left
waiting forever: the trim used to clear the wake-up the call had just set (seen as a proposer hang, issue 23).
"""

from __future__ import annotations

import asyncio
import threading

from crucible.runtime import batching
from crucible.runtime.batching import BatchSettings, DynamicBatcher


async def test_a_call_that_arrives_during_the_idle_trim_is_served(monkeypatch):
    trimming, release = threading.Event(), threading.Event()

    def slow_trim() -> bool:
        trimming.set()
        release.wait(5)
        return True

    monkeypatch.setattr(batching, "trim_heap", slow_trim)
    settings = BatchSettings(max_batch_size=4, max_batch_tokens=8, max_wait_s=0.0, max_queue_size=16)
    batcher = DynamicBatcher("t", lambda items: [i * 2 for i in items], settings, cost=lambda item: 8)
    batcher.start()
    try:
        assert await batcher.submit(1) == 2  # heavy enough (8 padded tokens) to trim once the queue is idle
        await asyncio.to_thread(trimming.wait, 5)
        late = asyncio.ensure_future(batcher.submit(3))  # arrives while the loop awaits the trim
        await asyncio.sleep(0.05)
        release.set()
        assert await asyncio.wait_for(late, 5) == 6
    finally:
        release.set()
        await batcher.stop()
