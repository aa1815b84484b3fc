"""The shared dynamic batcher: windows, limits, length grouping, admission, deadlines, cancellation, failures.

A pure-Python run_batch records every batch it sees; no model, no grpc.
"""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from crucible.runtime.batching import BatcherMetrics, BatchSettings, DynamicBatcher
from crucible.runtime.errors import DeadlineExceeded, ResourceExhausted, Unavailable


class Recorder:
    def __init__(self, delay: float = 0.0, fail_on: str | None = None, wrong_count: bool = False) -> None:
        self.batches: list[list[str]] = []
        self.delay = delay
        self.fail_on = fail_on
        self.wrong_count = wrong_count
        self.threads: set[str] = set()

    def __call__(self, items: list[str]) -> list[str]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        if self.delay:
            time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise ValueError("model exploded")
        out = [item.upper() for item in items]
        return out[:-1] if self.wrong_count else out


async def _batcher(run, **settings) -> DynamicBatcher:
    defaults = dict(max_batch_size=4, max_batch_tokens=0, max_wait_s=0.05, max_queue_size=100)
    defaults.update(settings)
    b = DynamicBatcher("test", run, BatchSettings(**defaults), cost=len, metrics=BatcherMetrics(CollectorRegistry()))
    b.start()
    return b


async def test_concurrent_calls_share_batches_and_results_keep_order():
    run = Recorder()
    b = await _batcher(run)
    results = await asyncio.gather(*(b.submit(w) for w in ["a", "b", "c", "d", "e"]))
    await b.stop()
    assert results == ["A", "B", "C", "D", "E"]
    assert sorted(len(x) for x in run.batches) == [1, 4]
    assert all(name.startswith("test-model") for name in run.threads)


async def test_window_closes_on_timeout_with_a_partial_batch():
    run = Recorder()
    b = await _batcher(run, max_wait_s=0.02)
    t0 = time.monotonic()
    assert await b.submit("x") == "X"
    assert time.monotonic() - t0 < 1.0
    await b.stop()
    assert run.batches == [["x"]]


async def test_token_budget_splits_batches_and_counts_padding():
    run = Recorder()
    b = await _batcher(run, max_batch_size=10, max_batch_tokens=12)
    # 4 rows x longest 3 = 12 fits; a 5th would not.
    await asyncio.gather(*(b.submit(w) for w in ["aaa", "bbb", "ccc", "ddd", "eee"]))
    await b.stop()
    assert [len(x) for x in run.batches] == [4, 1]
    assert all(len(batch) * max(map(len, batch)) <= 12 for batch in run.batches)


async def test_similar_lengths_are_grouped_to_cut_padding():
    run = Recorder(delay=0.05)
    b = await _batcher(run, max_batch_size=2, max_wait_s=0.0)
    first = asyncio.ensure_future(b.submit("z"))  # occupies the model while the rest queue up
    await asyncio.sleep(0.01)
    words = ["a" * 10, "b", "c" * 10, "d"]
    results = await asyncio.gather(*(b.submit(w) for w in words))
    await first
    await b.stop()
    assert results == [w.upper() for w in words]
    later = run.batches[1:]
    assert sorted(sorted(map(len, batch)) for batch in later) == [[1, 1], [10, 10]]


async def test_full_queue_rejects_at_once_with_resource_exhausted_and_recovers():
    run = Recorder(delay=0.2)
    b = await _batcher(run, max_batch_size=1, max_wait_s=0.0, max_queue_size=2)
    running = asyncio.ensure_future(b.submit("busy"))
    await asyncio.sleep(0.05)
    queued = [asyncio.ensure_future(b.submit(w)) for w in ["q1", "q2"]]
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    with pytest.raises(ResourceExhausted) as err:
        await b.submit_many(["x", "y"])
    assert time.monotonic() - t0 < 0.05
    assert err.value.reason == "QUEUE_FULL"
    assert await running == "BUSY" and await asyncio.gather(*queued) == ["Q1", "Q2"]
    assert await b.submit("after") == "AFTER"
    await b.stop()
    assert ["x"] not in run.batches


async def test_expired_items_are_dropped_before_compute():
    run = Recorder(delay=0.2)
    b = await _batcher(run, max_batch_size=1, max_wait_s=0.0)
    running = asyncio.ensure_future(b.submit("busy"))
    await asyncio.sleep(0.02)
    with pytest.raises(DeadlineExceeded):
        await b.submit("late", timeout=0.05)
    await running
    await asyncio.sleep(0.05)
    await b.stop()
    assert ["late"] not in run.batches


async def test_cancelled_callers_items_are_not_computed():
    run = Recorder(delay=0.2)
    b = await _batcher(run, max_batch_size=1, max_wait_s=0.0)
    running = asyncio.ensure_future(b.submit("busy"))
    await asyncio.sleep(0.02)
    gone = asyncio.ensure_future(b.submit("gone"))
    await asyncio.sleep(0.02)
    gone.cancel()
    await running
    assert await b.submit("next") == "NEXT"
    await b.stop()
    assert ["gone"] not in run.batches


async def test_a_failed_batch_fails_every_caller_and_the_batcher_keeps_going():
    run = Recorder(fail_on="bad")
    b = await _batcher(run)
    results = await asyncio.gather(*(b.submit(w) for w in ["ok", "bad"]), return_exceptions=True)
    assert all(isinstance(r, ValueError) for r in results)
    assert await b.submit("fine") == "FINE"
    await b.stop()


async def test_result_count_mismatch_is_an_error_not_a_misaligned_answer():
    b = await _batcher(Recorder(wrong_count=True))
    with pytest.raises(RuntimeError, match="returned 1 results for 2 items"):
        await b.submit_many(["a", "b"])
    await b.stop()


async def test_identical_inflight_items_are_computed_once():
    run = Recorder(delay=0.05)
    b = DynamicBatcher("dedup", run, BatchSettings(max_batch_size=8, max_wait_s=0.02), dedup_key=lambda x: x)
    b.start()
    results = await asyncio.gather(*(b.submit("same") for _ in range(5)), b.submit("other"))
    await b.stop()
    assert results == ["SAME"] * 5 + ["OTHER"]
    assert sum(batch.count("same") for batch in run.batches) == 1


async def test_group_key_keeps_incompatible_items_apart():
    run = Recorder()
    b = DynamicBatcher("groups", run, BatchSettings(max_batch_size=8, max_wait_s=0.02), group=lambda x: x[0])
    b.start()
    await asyncio.gather(*(b.submit(w) for w in ["a1", "b1", "a2", "b2"]))
    await b.stop()
    assert all(len({w[0] for w in batch}) == 1 for batch in run.batches)


async def test_stop_fails_waiting_items_with_unavailable():
    run = Recorder(delay=0.3)
    b = await _batcher(run, max_batch_size=1, max_wait_s=0.0)
    running = asyncio.ensure_future(b.submit("busy"))
    await asyncio.sleep(0.02)
    waiting = asyncio.ensure_future(b.submit("waiting"))
    await asyncio.sleep(0.02)
    await b.stop()
    with pytest.raises(Unavailable):
        await waiting
    with pytest.raises(Unavailable):
        await b.submit("after stop")
    await asyncio.gather(running, return_exceptions=True)


def test_throughput_is_weighted_by_tokens_so_small_batches_barely_move_it():
    from crucible.runtime.batching import Throughput

    rate = Throughput(window_tokens=10_000, prior=50.0)
    assert rate.rate == 50.0  # the prior until the first measurement
    rate.observe(8_000, 2.0)  # a full batch: 4000 tokens/s
    for _ in range(10):
        rate.observe(10, 0.01)  # single short items at idle: 1000 tokens/s each
    assert 3_500 < rate.rate < 4_000
    rate.observe(0, 1.0)  # nothing computed: ignored
    rate.forget()
    assert rate.rate == 50.0


async def test_admission_by_wait_counts_the_running_batch_and_can_be_turned_off():
    gate = threading.Event()

    def run(items: list[str]) -> list[str]:
        gate.wait(10)
        return items

    b = DynamicBatcher(
        "wait", run, BatchSettings(max_batch_size=1, max_batch_tokens=0, max_wait_s=0.0), cost=len, prior_tokens_per_s=100.0
    )
    b.start()
    running = asyncio.ensure_future(b.submit("r" * 100))  # about 1 s of work at 100 tokens/s
    await asyncio.sleep(0.05)
    assert 0.8 < b.expected_wait(0) <= 1.0
    with pytest.raises(ResourceExhausted) as err:
        await b.submit("x" * 10, timeout=0.5)
    assert err.value.reason == "QUEUE_WAIT_EXCEEDS_DEADLINE"
    assert set(err.value.metadata) == {"expected_wait_s", "deadline_s", "tokens_ahead", "tokens_per_s"}
    assert err.value.metadata["tokens_ahead"] == "100"
    waiting = asyncio.ensure_future(b.submit("y" * 10))  # no deadline: bounded by the queue alone
    gate.set()
    assert await running == "r" * 100 and await waiting == "y" * 10
    await b.stop()

    off = DynamicBatcher(
        "off",
        run,
        BatchSettings(max_batch_size=1, max_batch_tokens=0, max_wait_s=0.0, admit_by_wait=False),
        cost=len,
        prior_tokens_per_s=1.0,
    )
    off.start()
    assert await off.submit("z" * 10, timeout=5) == "z" * 10
    await off.stop()


async def test_a_shared_item_expires_with_its_last_callers_deadline_not_its_first():
    gate = threading.Event()

    def run(items: list[str]) -> list[str]:
        gate.wait(10)
        return [i.upper() for i in items]

    b = DynamicBatcher(
        "share", run, BatchSettings(max_batch_size=1, max_batch_tokens=0, max_wait_s=0.0), dedup_key=lambda item: item
    )
    b.start()
    blocker = asyncio.ensure_future(b.submit("first"))
    await asyncio.sleep(0.05)
    hurried = asyncio.ensure_future(b.submit("same", timeout=0.1))
    patient = asyncio.ensure_future(b.submit("same", timeout=30))
    await asyncio.sleep(0.3)  # past the hurried caller's deadline; it has not been computed yet
    gate.set()
    assert await patient == "SAME"
    assert await blocker == "FIRST"
    assert (await asyncio.gather(hurried, return_exceptions=True))[0] == "SAME"  # nobody cancelled it: it got the result
    await b.stop()
