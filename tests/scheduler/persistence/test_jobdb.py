"""The job database (persistence/jobdb.py, records.py): round trip, pagination, the stored bookkeeping format that
earlier state folders were written in, and group commit."""

from __future__ import annotations

import json

from crucible.api.scheduler.v1 import job_pb2
from crucible.scheduler.domain import states as st
from crucible.scheduler.persistence.jobdb import JobStore, decode_page_token, encode_page_token
from crucible.scheduler.persistence.records import JobBookkeeping, JobRecord

# --- store --------------------------------------------------------------------------------------------------------


def test_store_roundtrip_and_pagination(tmp_path) -> None:
    store = JobStore(tmp_path / "s.db")
    for i in range(5):
        job = job_pb2.Job(job_id=f"j{i}", state=st.PENDING, provider="local")
        job.create_time.FromSeconds(1000 + i)
        store.insert(JobRecord(job, "sha", f"req{i}", JobBookkeeping.from_json({"n": i})))
    store.close()
    store = JobStore(tmp_path / "s.db")  # reopened: everything is there
    assert store.count() == 5
    assert store.by_request_id("req3").job.job_id == "j3"
    page = store.list(limit=2)
    assert [r.job.job_id for r in page] == ["j4", "j3"]
    token = encode_page_token(page[-1].seq)
    assert [r.job.job_id for r in store.list(limit=2, before_seq=decode_page_token(token))] == ["j2", "j1"]
    assert decode_page_token("garbage!") is None
    rec = store.get("j0")
    assert rec.bookkeeping.unknown == {"n": 0}  # keys of another version come back as they were
    rec.job.state = st.RUNNING
    store.update(rec)
    assert [r.job.job_id for r in store.list(states=[st.RUNNING])] == ["j0"]
    assert len(store.unfinished(tuple(st.TERMINAL))) == 5


def test_bookkeeping_reads_and_writes_the_stored_meta_format() -> None:
    """A `meta` column as earlier versions wrote it loads into the typed bookkeeping and is written back unchanged."""
    stored = {
        "candidates": [{"offer": "0a03612f62", "estimated_usd": 1.5}, {"offer": "", "estimated_usd": None}],
        "assumptions": ["on-demand"],
        "handles": {"1": {"provider": "local", "ref": "r1", "data": {"pid": 7}}},
        "log_starts": {"1": {"stdout": 0, "stderr": 0}, "2": {"stdout": 10, "stderr": 4}},
        "blocked_providers": ["lambda"],
        "blocked_locations": [["runpod", "EU"]],
        "restarts_used": 1,
        "recoveries": 2,
        "usage_until": {"1": 1700000000.5},
        "code_sha256": "ab" * 32,
        "code_bytes": 123,
        "cancel_reason": "cancelled: x",
        "stop_reason": "max_cost_usd $1.00 reached",
        "log_read": {"2": {"stdout": 99}},
        "log_capped": {"stdout": True},
        "log_dropped": {"stdout": 5},
        "uploaded": {"out.txt": [3, 1700000001.25]},
        "inputs_staged": 0,
        "inputs_local": True,
        "files_expired": True,
        "cancel_sent_2": True,
        "released_1": True,
        "collected_1": True,
        "collect_error_2": "store down",
        "collect_skipped_1": ["big.bin"],
        "from_a_later_version": {"x": 1},
    }
    book = JobBookkeeping.from_json(json.loads(json.dumps(stored)))
    assert book.handles[1].data == {"pid": 7} and book.log_starts[2] == {"stdout": 10, "stderr": 4}
    assert book.is_blocked("lambda", "any") and book.is_blocked("runpod", "EU") and not book.is_blocked("runpod", "US")
    assert book.cancel_sent == {2} and book.released == {1} and book.collected == {1}
    assert book.collect_errors == {2: "store down"} and book.collect_skipped == {1: ["big.bin"]}
    assert book.usage_until == {1: 1700000000.5} and book.log_capped == {"stdout"} and book.inputs_staged == 0
    assert book.candidates[0].offer().offer_id == "a/b" and book.candidates[1].estimated_usd is None
    assert book.to_json() == stored
    assert JobBookkeeping.from_json({}).cancel_text == "cancelled"


async def test_group_commit_isolates_a_failing_insert(tmp_path) -> None:
    import asyncio
    import sqlite3

    from crucible.scheduler.persistence.jobdb import AsyncJobStore

    store = AsyncJobStore(JobStore(tmp_path / "g.db"))
    recs = [JobRecord(job_pb2.Job(job_id=f"g{i}", state=st.PENDING), "sha", "same" if i in (3, 4) else f"r{i}") for i in range(8)]
    results = await asyncio.gather(*(store.insert(r) for r in recs), return_exceptions=True)
    failed = [i for i, r in enumerate(results) if isinstance(r, sqlite3.IntegrityError)]
    assert failed == [4]  # the second use of request id "same" fails alone
    assert store.sync.count() == 7
    await store.close()
