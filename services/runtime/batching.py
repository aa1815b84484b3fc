"""Dynamic batching shared by the model services (detector, proposer, target scorer): one implementation.

Ray Serve's @serve.batch model: a future per item, one queue; the window opens at the first arrival and closes on
max batch size, a padded-token budget or a wait timeout. Admission is bounded (RESOURCE_EXHAUSTED at once when full),
expired and cancelled items are dropped before compute, identical in-flight items can share one computation, items of
similar length are grouped to cut padding, and the model runs in one worker thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from crucible.runtime.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_TIME_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    """Limits of one batcher (reported by each service's GetInfo as common.v1.BatchingSettings)."""

    #: Most items in one batch.
    max_batch_size: int = 32
    #: Padded-token budget of one batch (rows x longest row); 0 disables the budget.
    max_batch_tokens: int = 16384
    #: Seconds the window stays open after its first item before the batch runs anyway.
    max_wait_s: float = 0.005
    #: Most items waiting (not yet computing); more fail at once with RESOURCE_EXHAUSTED.
    max_queue_size: int = 1024

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        if self.max_batch_tokens < 0 or self.max_wait_s < 0 or self.max_queue_size < 1:
            raise ValueError("max_batch_tokens and max_wait_s must be >= 0 and max_queue_size >= 1")


class BatcherMetrics:
    """Queue depth, batch size, queue wait, compute time, items and rejections, labelled by batcher name."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        kw: dict[str, Any] = {"registry": registry} if registry is not None else {"registry": None}
        self.queue_depth = Gauge("crucible_batcher_queue_depth", "Items waiting for a batch.", ["batcher"], **kw)
        self.batch_size = Histogram("crucible_batcher_batch_size", "Items per executed batch.", ["batcher"],
                                    buckets=_SIZE_BUCKETS, **kw)
        self.batch_tokens = Histogram("crucible_batcher_batch_padded_tokens", "Padded tokens (rows x longest) per batch.",
                                      ["batcher"], buckets=(64, 256, 1024, 4096, 16384, 65536), **kw)
        self.queue_wait = Histogram("crucible_batcher_queue_wait_seconds", "Time from admission to the start of compute.",
                                    ["batcher"], buckets=_TIME_BUCKETS, **kw)
        self.compute = Histogram("crucible_batcher_compute_seconds", "Time one batch spends in the model.", ["batcher"],
                                 buckets=_TIME_BUCKETS, **kw)
        self.items = Counter("crucible_batcher_items_total", "Items by outcome.", ["batcher", "outcome"], **kw)


@dataclasses.dataclass(eq=False)
class _Entry(Generic[T]):
    item: T
    cost: int
    group: Hashable
    key: Hashable | None
    deadline: float | None
    enqueued: float
    future: asyncio.Future[Any]


class DynamicBatcher(Generic[T, R]):
    """Groups items submitted by concurrent calls into batches for `run_batch(items) -> results` (same length, same order).

    `cost(item)` is the item's length in tokens (for the budget and length grouping); `group(item)` keeps items with
    different keys out of one batch (e.g. different sampling settings); `dedup_key(item)` lets identical in-flight
    items share one computation.
    """

    def __init__(
        self,
        name: str,
        run_batch: Callable[[list[T]], Sequence[R]],
        settings: BatchSettings,
        *,
        cost: Callable[[T], int] = lambda _item: 1,
        group: Callable[[T], Hashable] = lambda _item: None,
        dedup_key: Callable[[T], Hashable] | None = None,
        metrics: BatcherMetrics | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._run_batch = run_batch
        self._cost = cost
        self._group = group
        self._dedup_key = dedup_key
        self._metrics = metrics
        self._pending: list[_Entry[T]] = []
        self._inflight: dict[Hashable, asyncio.Future[Any]] = {}
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-model")
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    # ---- public API -------------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the batching loop on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._loop(), name=f"{self.name}-batcher")

    async def stop(self) -> None:
        """Fail waiting items with UNAVAILABLE, let the running batch finish, and release the worker thread."""
        self._closed = True
        for entry in self._pending:
            if not entry.future.done():
                entry.future.set_exception(Unavailable(f"{self.name} is shutting down", reason="SHUTTING_DOWN"))
        self._pending.clear()
        self._wakeup.set()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)
        self._set_depth()

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    async def submit(self, item: T, *, timeout: float | None = None) -> R:
        """One item; see submit_many."""
        return (await self.submit_many([item], timeout=timeout))[0]

    async def submit_many(self, items: Sequence[T], *, timeout: float | None = None) -> list[R]:
        """Admit all items of one call or none (RESOURCE_EXHAUSTED), then wait for their results.

        `timeout` is the caller's remaining deadline in seconds: items still queued when it passes are dropped
        before compute with DEADLINE_EXCEEDED. If the caller is cancelled, its queued items are dropped too.
        """
        if self._closed or self._worker is None:
            raise Unavailable(f"{self.name} is not running", reason="NOT_READY")
        if not items:
            return []
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        deadline = now + timeout if timeout is not None else None
        futures: list[asyncio.Future[Any]] = []
        new_entries: list[_Entry[T]] = []
        for item in items:
            key = self._dedup_key(item) if self._dedup_key is not None else None
            shared = self._inflight.get(key) if key is not None else None
            if shared is not None and not shared.done():
                futures.append(shared)
                continue
            future: asyncio.Future[Any] = loop.create_future()
            entry = _Entry(item, max(1, int(self._cost(item))), self._group(item), key, deadline, now, future)
            new_entries.append(entry)
            futures.append(future)
        if len(self._pending) + len(new_entries) > self.settings.max_queue_size:
            for entry in new_entries:
                entry.future.cancel()
            if self._metrics:
                self._metrics.items.labels(self.name, "rejected").inc(len(new_entries))
            raise ResourceExhausted(
                f"{self.name} queue is full ({len(self._pending)} waiting, limit {self.settings.max_queue_size}); retry with backoff",
                reason="QUEUE_FULL",
                metadata={"queue_depth": str(len(self._pending)), "max_queue_size": str(self.settings.max_queue_size)},
            )
        budget = self.settings.max_batch_tokens
        for entry in new_entries:
            if budget and entry.cost > budget:
                for e in new_entries:
                    e.future.cancel()
                raise InvalidArgument(f"item of {entry.cost} tokens exceeds the batch token budget of {budget}",
                                      reason="ITEM_TOO_LARGE")
        for entry in new_entries:
            if entry.key is not None:
                self._inflight[entry.key] = entry.future
                entry.future.add_done_callback(lambda f, k=entry.key: self._forget(k, f))
        self._pending.extend(new_entries)
        self._set_depth()
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(asyncio.shield(f) for f in futures)))
        except asyncio.CancelledError:
            # The caller went away: drop what it alone was waiting for (shared de-duplicated futures stay).
            for entry in new_entries:
                if not entry.future.done():
                    entry.future.cancel()
            raise

    # ---- internals --------------------------------------------------------------------------------------------------

    def _forget(self, key: Hashable, future: asyncio.Future[Any]) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
        if future.cancelled():
            return
        future.exception()  # mark retrieved: a de-duplicated caller may have gone away

    def _set_depth(self) -> None:
        if self._metrics:
            self._metrics.queue_depth.labels(self.name).set(len(self._pending))

    def _drop_dead(self) -> None:
        now = time.monotonic()
        alive = []
        for entry in self._pending:
            if entry.future.done():  # cancelled by its caller
                if self._metrics:
                    self._metrics.items.labels(self.name, "cancelled").inc()
                continue
            if entry.deadline is not None and now >= entry.deadline:
                entry.future.set_exception(
                    DeadlineExceeded(f"deadline passed after {now - entry.enqueued:.3f}s in the {self.name} queue",
                                     reason="DEADLINE_IN_QUEUE")
                )
                if self._metrics:
                    self._metrics.items.labels(self.name, "expired").inc()
                continue
            alive.append(entry)
        if len(alive) != len(self._pending):
            self._pending = alive
            self._set_depth()  # else an idle server keeps reporting the dropped items (HPA and alerts read this gauge)

    def _take_batch(self) -> list[_Entry[T]]:
        """Oldest item first (no starvation), then the same-group items closest to it in length, within the limits."""
        anchor = self._pending[0]
        candidates = sorted(
            (e for e in self._pending[1:] if e.group == anchor.group), key=lambda e: abs(e.cost - anchor.cost)
        )
        batch = [anchor]
        longest = anchor.cost
        budget = self.settings.max_batch_tokens
        for entry in candidates:
            if len(batch) >= self.settings.max_batch_size:
                break
            new_longest = max(longest, entry.cost)
            if budget and new_longest * (len(batch) + 1) > budget:
                continue
            batch.append(entry)
            longest = new_longest
        chosen = set(map(id, batch))
        self._pending = [e for e in self._pending if id(e) not in chosen]
        return batch

    def _window_full(self) -> bool:
        if len(self._pending) >= self.settings.max_batch_size:
            return True
        budget = self.settings.max_batch_tokens
        if budget:
            longest = max(e.cost for e in self._pending)
            return longest * (len(self._pending) + 1) > budget
        return False

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closed:
            self._drop_dead()
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            window_end = self._pending[0].enqueued + self.settings.max_wait_s
            while not self._window_full() and (remaining := window_end - time.monotonic()) > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
            self._drop_dead()
            if not self._pending:
                continue
            batch = self._take_batch()
            self._set_depth()
            await self._execute(loop, batch)

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Entry[T]]) -> None:
        started = time.monotonic()
        if self._metrics:
            for entry in batch:
                self._metrics.queue_wait.labels(self.name).observe(started - entry.enqueued)
            self._metrics.batch_size.labels(self.name).observe(len(batch))
            self._metrics.batch_tokens.labels(self.name).observe(len(batch) * max(e.cost for e in batch))
        items = [entry.item for entry in batch]
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, items)
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name} batch returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(Unavailable(f"{self.name} is shutting down", reason="SHUTTING_DOWN"))
            raise
        except Exception as err:  # every caller of a failed batch gets the error; none hangs
            log.exception("%s batch of %d failed", self.name, len(batch))
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(err)
            if self._metrics:
                self._metrics.items.labels(self.name, "failed").inc(len(batch))
            return
        finally:
            if self._metrics:
                self._metrics.compute.labels(self.name).observe(time.monotonic() - started)
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)
        if self._metrics:
            self._metrics.items.labels(self.name, "done").inc(len(batch))
