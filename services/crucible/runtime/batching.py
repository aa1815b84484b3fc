"""Dynamic batching shared by the model services (detector, proposer, target scorer): one implementation.

Ray Serve's @serve.batch model: a future per item, one queue; the window opens at the first arrival and closes on
max batch size, a padded-token budget or a wait timeout. Admission is bounded twice, both refusing at once with
RESOURCE_EXHAUSTED: by queue length, and by expected wait (tokens ahead over the measured tokens per second) against
the caller's deadline. Expired and cancelled items are dropped before compute, a running batch whose callers have all
gone is told to stop, identical in-flight items share one computation, items of similar length are grouped to cut
padding, and the model runs in one worker thread so the event loop stays free.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from crucible.runtime.errors import DeadlineExceeded, InvalidArgument, ResourceExhausted, Unavailable
from crucible.runtime.memory import trim_heap

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
    #: Whether a call whose expected wait (tokens ahead / measured tokens per second) exceeds its deadline is refused
    #: at once with RESOURCE_EXHAUSTED (QUEUE_WAIT_EXCEEDS_DEADLINE) instead of queued to time out.
    admit_by_wait: bool = True

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
        self.batch_size = Histogram(
            "crucible_batcher_batch_size", "Items per executed batch.", ["batcher"], buckets=_SIZE_BUCKETS, **kw
        )
        self.batch_tokens = Histogram(
            "crucible_batcher_batch_padded_tokens",
            "Padded tokens (rows x longest) per batch.",
            ["batcher"],
            buckets=(64, 256, 1024, 4096, 16384, 65536),
            **kw,
        )
        self.queue_wait = Histogram(
            "crucible_batcher_queue_wait_seconds",
            "Time from admission to the start of compute.",
            ["batcher"],
            buckets=_TIME_BUCKETS,
            **kw,
        )
        self.compute = Histogram(
            "crucible_batcher_compute_seconds", "Time one batch spends in the model.", ["batcher"], buckets=_TIME_BUCKETS, **kw
        )
        self.items = Counter("crucible_batcher_items_total", "Items by outcome.", ["batcher", "outcome"], **kw)
        self.throughput = Gauge(
            "crucible_batcher_tokens_per_second",
            "Measured model throughput used for admission (tokens of cost per compute second).",
            ["batcher"],
            **kw,
        )
        self.queued_tokens = Gauge("crucible_batcher_queued_tokens", "Tokens (cost) waiting or computing.", ["batcher"], **kw)


class Throughput:
    """Tokens per second of a batcher's model, measured from completed batches.

    The rate is taken over an exponentially decayed window of the last `window_tokens` tokens computed (weights by
    tokens, not by batches), so a run of small batches at idle barely moves what a full batch measured. Until the
    first measurement `prior` (tokens/s, from the service's warm-up; None = unknown) stands in.
    """

    def __init__(self, window_tokens: float, prior: float | None = None) -> None:
        self.window_tokens = max(1.0, float(window_tokens))
        self._tokens = 0.0
        self._seconds = 0.0
        self.prior = prior

    def observe(self, tokens: int, seconds: float) -> None:
        """Add one completed batch of `tokens` (cost) that took `seconds` of compute."""
        if tokens <= 0 or seconds <= 0 or not math.isfinite(seconds):
            return
        keep = math.exp(-tokens / self.window_tokens)
        self._tokens = self._tokens * keep + tokens
        self._seconds = self._seconds * keep + seconds

    def forget(self) -> None:
        """Drop every measurement (the prior stays): e.g. after a warm-up pass that paid one-time costs."""
        self._tokens = self._seconds = 0.0

    @property
    def rate(self) -> float | None:
        """Tokens per second, or None before any measurement and without a prior."""
        if self._seconds > 0:
            return self._tokens / self._seconds
        return self.prior


class BatchCancelled(Exception):
    """Raised by a batch function that stopped early because every caller of its batch had gone."""


class BatchCancel:
    """Handed to a cancellable batch function: `cancelled()` turns true once every caller of the batch has gone
    (cancelled, or past its deadline). Long loops check it between steps and raise BatchCancelled, or stop rows."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancelled(self) -> bool:
        return self._event.is_set()

    def set(self) -> None:
        self._event.set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise BatchCancelled("every caller of this batch has gone")


@dataclasses.dataclass(eq=False)
class _Entry(Generic[T]):
    item: T
    cost: int
    group: Hashable
    key: Hashable | None
    deadline: float | None
    enqueued: float
    future: asyncio.Future[Any]
    #: Calls waiting for this entry (more than one when identical in-flight items are shared).
    waiters: int = 1


class DynamicBatcher(Generic[T, R]):
    """Groups items submitted by concurrent calls into batches for `run_batch(items) -> results` (same length, same order).

    `cost(item)` is the item's length in tokens (for the budget, length grouping and the expected wait); `group(item)`
    keeps items with different keys out of one batch (e.g. different sampling settings); `dedup_key(item)` lets
    identical in-flight items share one computation. A `run_batch(items, cancel)` taking a second parameter gets a
    BatchCancel to check between steps. `prior_tokens_per_s` seeds the throughput used for admission by wait.
    """

    def __init__(
        self,
        name: str,
        run_batch: Callable[..., Sequence[R]],
        settings: BatchSettings,
        *,
        cost: Callable[[T], int] = lambda _item: 1,
        group: Callable[[T], Hashable] = lambda _item: None,
        dedup_key: Callable[[T], Hashable] | None = None,
        metrics: BatcherMetrics | None = None,
        prior_tokens_per_s: float | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._run_batch = run_batch
        self._cancellable = _takes_two_arguments(run_batch)
        self._cost = cost
        self._group = group
        self._dedup_key = dedup_key
        self._metrics = metrics
        self._pending: list[_Entry[T]] = []
        self._inflight: dict[Hashable, _Entry[T]] = {}
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-model")
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        window = 4 * (settings.max_batch_tokens or 4096)
        self.throughput = Throughput(window, prior_tokens_per_s)
        self._queued_cost = 0
        self._running_cost = 0
        self._running_since = 0.0
        self._heavy_since_trim = 0

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
        self._queued_cost = 0
        self._wakeup.set()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        self._executor.shutdown(wait=True)
        self._set_depth()

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    def expected_wait(self, extra_cost: int = 0) -> float | None:
        """Seconds until `extra_cost` more tokens, queued now, would be computed; None while the rate is unknown."""
        rate = self.throughput.rate
        if not rate:
            return None
        running_left = 0.0
        if self._running_cost:
            running_left = max(0.0, self._running_cost / rate - (time.monotonic() - self._running_since))
        return running_left + (self._queued_cost + extra_cost) / rate

    def check_wait(self, cost: int, timeout: float | None, *, items: int = 0) -> None:
        """RESOURCE_EXHAUSTED (QUEUE_WAIT_EXCEEDS_DEADLINE) when `cost` more tokens could not be computed within
        `timeout` seconds at the measured rate. Services call it with a lower bound of a call's cost before tokenising
        (so a call that cannot make it costs no tokeniser work); `items` then counts as rejected in the metrics."""
        if timeout is None or not self.settings.admit_by_wait:
            return
        wait = self.expected_wait(cost)
        if wait is None or wait <= timeout:
            return
        if items and self._metrics:
            self._metrics.items.labels(self.name, "rejected").inc(items)
        rate = self.throughput.rate or 0.0
        ahead = self._queued_cost + self._running_cost
        raise ResourceExhausted(
            f"{self.name} would need about {wait:.1f}s for this call ({ahead} tokens ahead of it at {rate:.0f} tokens/s) "
            f"but its deadline is {max(timeout, 0.0):.1f}s away; retry with backoff or a longer deadline",
            reason="QUEUE_WAIT_EXCEEDS_DEADLINE",
            metadata={
                "expected_wait_s": f"{wait:.3f}",
                "deadline_s": f"{max(timeout, 0.0):.3f}",
                "tokens_ahead": str(ahead),
                "tokens_per_s": f"{rate:.1f}",
            },
        )

    async def submit(self, item: T, *, timeout: float | None = None) -> R:
        """One item; see submit_many."""
        return (await self.submit_many([item], timeout=timeout))[0]

    async def submit_many(self, items: Sequence[T], *, timeout: float | None = None) -> list[R]:
        """Admit all items of one call or none (RESOURCE_EXHAUSTED), then wait for their results.

        `timeout` is the caller's remaining deadline in seconds. A call that the queue ahead of it would keep waiting
        past it is refused at once (QUEUE_WAIT_EXCEEDS_DEADLINE); items still queued when it passes are dropped before
        compute with DEADLINE_EXCEEDED. If the caller is cancelled, the items only it waits for are dropped too.
        """
        if self._closed or self._worker is None:
            raise Unavailable(f"{self.name} is not running", reason="NOT_READY")
        if not items:
            return []
        loop = asyncio.get_running_loop()
        now = time.monotonic()
        deadline = now + timeout if timeout is not None else None
        entries: list[_Entry[T]] = []  # one per item, shared or new
        new_entries: list[_Entry[T]] = []
        for item in items:
            key = self._dedup_key(item) if self._dedup_key is not None else None
            shared = self._inflight.get(key) if key is not None else None
            if shared is not None and not shared.future.done():
                entries.append(shared)
                continue
            future: asyncio.Future[Any] = loop.create_future()
            entry = _Entry(item, max(1, int(self._cost(item))), self._group(item), key, deadline, now, future, 0)
            new_entries.append(entry)
            entries.append(entry)
        if len(self._pending) + len(new_entries) > self.settings.max_queue_size:
            self._reject(new_entries)
            raise ResourceExhausted(
                f"{self.name} queue is full ({len(self._pending)} waiting, limit {self.settings.max_queue_size}); "
                "retry with backoff",
                reason="QUEUE_FULL",
                metadata={"queue_depth": str(len(self._pending)), "max_queue_size": str(self.settings.max_queue_size)},
            )
        budget = self.settings.max_batch_tokens
        for entry in new_entries:
            if budget and entry.cost > budget:
                for e in new_entries:
                    e.future.cancel()
                raise InvalidArgument(
                    f"item of {entry.cost} tokens exceeds the batch token budget of {budget}", reason="ITEM_TOO_LARGE"
                )
        new_cost = sum(e.cost for e in new_entries)
        if new_entries:
            try:
                self.check_wait(new_cost, timeout)
            except ResourceExhausted:
                self._reject(new_entries)
                raise
        for entry in entries:
            entry.waiters += 1
            if entry.waiters > 1 and entry.deadline is not None:  # shared: it expires with its last caller's deadline
                entry.deadline = None if deadline is None else max(entry.deadline, deadline)
        for entry in new_entries:
            if entry.key is not None:
                self._inflight[entry.key] = entry
                entry.future.add_done_callback(functools.partial(self._forget_done, entry))
        self._pending.extend(new_entries)
        self._queued_cost += new_cost
        self._set_depth()
        self._wakeup.set()
        try:
            return list(await asyncio.gather(*(asyncio.shield(e.future) for e in entries)))
        except asyncio.CancelledError:
            # The caller went away: drop what no other caller waits for (a shared item stays for its other callers).
            for entry in entries:
                entry.waiters -= 1
                if entry.waiters <= 0 and not entry.future.done():
                    entry.future.cancel()
            raise

    # ---- internals --------------------------------------------------------------------------------------------------

    def _reject(self, entries: list[_Entry[T]]) -> None:
        for entry in entries:
            entry.future.cancel()
        if self._metrics:
            self._metrics.items.labels(self.name, "rejected").inc(len(entries))

    def _forget_done(self, entry: _Entry[T], _future: asyncio.Future[T]) -> None:
        self._forget(entry)  # a done-callback of entry's future

    def _forget(self, entry: _Entry[T]) -> None:
        if self._inflight.get(entry.key) is entry:
            del self._inflight[entry.key]
        if entry.future.cancelled():
            return
        entry.future.exception()  # mark retrieved: a de-duplicated caller may have gone away

    def _set_depth(self) -> None:
        if self._metrics:
            self._metrics.queue_depth.labels(self.name).set(len(self._pending))
            self._metrics.queued_tokens.labels(self.name).set(self._queued_cost + self._running_cost)

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
                    DeadlineExceeded(
                        f"deadline passed after {now - entry.enqueued:.3f}s in the {self.name} queue", reason="DEADLINE_IN_QUEUE"
                    )
                )
                if self._metrics:
                    self._metrics.items.labels(self.name, "expired").inc()
                continue
            alive.append(entry)
        if len(alive) != len(self._pending):
            self._pending = alive
            self._queued_cost = sum(e.cost for e in alive)
            self._set_depth()  # else an idle server keeps reporting the dropped items (HPA and alerts read this gauge)

    def _take_batch(self) -> list[_Entry[T]]:
        """Oldest item first (no starvation), then the same-group items closest to it in length, within the limits."""
        anchor = self._pending[0]
        candidates = sorted((e for e in self._pending[1:] if e.group == anchor.group), key=lambda e: abs(e.cost - anchor.cost))
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
        self._queued_cost -= sum(e.cost for e in batch)
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
                await self._trim_when_idle(loop)
                if self._pending:
                    continue  # submitted during the trim: its wake-up must not be cleared (the call would hang)
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

    async def _trim_when_idle(self, loop: asyncio.AbstractEventLoop) -> None:
        """Once the queue has drained after heavy work, hand the freed heap back to the OS (glibc keeps it otherwise,
        so a burst would leave the process at its peak size). Runs in the model thread, between batches."""
        if self._heavy_since_trim >= (self.settings.max_batch_tokens or 4096):
            self._heavy_since_trim = 0
            await loop.run_in_executor(self._executor, trim_heap)

    def _watch(self, loop: asyncio.AbstractEventLoop, batch: list[_Entry[T]], cancel: BatchCancel) -> Callable[[], None]:
        """Set `cancel` once every future of the batch is done (its callers gone) or every caller's deadline passed."""
        handles: list[asyncio.TimerHandle] = []

        def check(_future: Any = None) -> None:
            if all(e.future.done() for e in batch):
                cancel.set()

        for entry in batch:
            entry.future.add_done_callback(check)
        deadlines = [e.deadline for e in batch if e.deadline is not None]
        if len(deadlines) == len(batch):  # every caller has a deadline: the batch is moot after the last one
            handles.append(loop.call_at(loop.time() + max(0.0, max(deadlines) - time.monotonic()), cancel.set))

        def unwatch() -> None:
            for entry in batch:
                entry.future.remove_done_callback(check)
            for handle in handles:
                handle.cancel()

        return unwatch

    async def _execute(self, loop: asyncio.AbstractEventLoop, batch: list[_Entry[T]]) -> None:
        started = time.monotonic()
        cost = sum(e.cost for e in batch)
        padded = len(batch) * max(e.cost for e in batch)
        self._running_cost, self._running_since = cost, started
        if self._metrics:
            for entry in batch:
                self._metrics.queue_wait.labels(self.name).observe(started - entry.enqueued)
            self._metrics.batch_size.labels(self.name).observe(len(batch))
            self._metrics.batch_tokens.labels(self.name).observe(padded)
        items = [entry.item for entry in batch]
        cancel = BatchCancel()
        unwatch = self._watch(loop, batch, cancel)
        try:
            if self._cancellable:
                results = await loop.run_in_executor(self._executor, self._run_batch, items, cancel)
            else:
                results = await loop.run_in_executor(self._executor, self._run_batch, items)
            if len(results) != len(batch):
                raise RuntimeError(f"{self.name} batch returned {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(Unavailable(f"{self.name} is shutting down", reason="SHUTTING_DOWN"))
            raise
        except BatchCancelled:
            log.info("%s batch of %d stopped early: its callers are gone", self.name, len(batch))
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(
                        DeadlineExceeded(f"deadline passed while {self.name} was computing", reason="DEADLINE_IN_COMPUTE")
                    )
            if self._metrics:
                self._metrics.items.labels(self.name, "abandoned").inc(len(batch))
            return
        except Exception as err:  # every caller of a failed batch gets the error; none hangs
            log.exception("%s batch of %d failed", self.name, len(batch))
            for entry in batch:
                if not entry.future.done():
                    entry.future.set_exception(err)
            if self._metrics:
                self._metrics.items.labels(self.name, "failed").inc(len(batch))
            return
        finally:
            unwatch()
            elapsed = time.monotonic() - started
            self._running_cost = 0
            self._heavy_since_trim += padded
            if self._metrics:
                self._metrics.compute.labels(self.name).observe(elapsed)
                self._set_depth()
        self.throughput.observe(cost, elapsed)
        if self._metrics and self.throughput.rate:
            self._metrics.throughput.labels(self.name).set(self.throughput.rate)
        for entry, result in zip(batch, results, strict=True):
            if not entry.future.done():
                entry.future.set_result(result)
        if self._metrics:
            self._metrics.items.labels(self.name, "done").inc(len(batch))


def _takes_two_arguments(run_batch: Callable[..., Any]) -> bool:
    """Whether `run_batch` accepts a second positional argument (the BatchCancel)."""
    try:
        parameters = list(inspect.signature(run_batch).parameters.values())
    except (TypeError, ValueError):
        return False
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind is p.VAR_POSITIONAL for p in parameters)
