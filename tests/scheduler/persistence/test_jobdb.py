"""The job database (persistence/jobdb.py, records.py): round trip, pagination, the stored bookkeeping format that
earlier state folders were written in, and group commit."""

from __future__ import annotations

import json
import sqlite3

from crucible.api.scheduler.v1 import job_pb2
from crucible.scheduler import convert
from crucible.scheduler.domain import states as st
from crucible.scheduler.domain.record import Job
from crucible.scheduler.persistence.jobdb import JobStore, decode_page_token, encode_page_token
from crucible.scheduler.persistence.records import JobBookkeeping, JobRecord

# --- store --------------------------------------------------------------------------------------------------------


def test_store_roundtrip_and_pagination(tmp_path) -> None:
    store = JobStore(tmp_path / "s.db")
    for i in range(5):
        job = Job(job_id=f"j{i}", state=st.PENDING, provider="local", create_time=(1000 + i) * 10**9)
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


def _full_job() -> job_pb2.Job:
    """A Job message with every field set, as a job that ran twice leaves it in the job database."""
    offer = {
        "offer_id": "runpod/a100/EU/spot",
        "provider": "runpod",
        "instance_type": "a100",
        "region": "EU",
        "gpu_name": "A100",
        "gpu_count": 2,
        "gpu_memory_gib": 80.0,
        "vcpus": 16,
        "memory_gib": 128.5,
        "spot": True,
        "price_usd_per_hour": 1.25,
        "storage_price_usd_per_gb_hour": 0.001,
        "egress_price_usd_per_gb": 0.02,
        "billing_granularity": 1,
        "availability": 2,
        "price_origin": 3,
        "price_source": "live api",
        "price_observed_at": {"seconds": 1700000000, "nanos": 123456789},
    }
    stamp = {"seconds": 1700000100, "nanos": 987654321}
    return job_pb2.Job(
        job_id="job-20231114-abc",
        spec=job_pb2.JobSpec(
            display_name="demo",
            command=["python", "train.py", "--x=1"],
            code_dir="/code",
            container_image="img:1",
            env={"A": "1", "B": "two"},
            resources={"gpu_names": ["A100"], "gpu_count": 2, "min_gpu_memory_gib": 40, "min_vcpus": 8, "min_memory_gib": 64},
            max_duration={"seconds": 7200, "nanos": 5},
            expected_duration={"seconds": 3600},
            max_cost_usd=0.0,
            max_price_usd_per_hour=2.5,
            provider_policy=job_pb2.PROVIDER_POLICY_ORDERED,
            providers=["runpod", "lambda"],
            spot_allowed=True,
            checkpoint_dir="ckpt",
            restart_policy={"max_restarts_on_errors": 3, "recover_on_preemption": False},
            budget_scope="project:x",
            inputs=[{"uri": "builtin:tinyshakespeare"}, {"uri": "s3://b/p", "path": "data/p"}],
        ),
        state=job_pb2.JOB_STATE_SUCCEEDED,
        transitions=[
            {"from_state": 0, "to_state": 1, "time": stamp, "reason": "created", "attempt": 0},
            {"from_state": 1, "to_state": 2, "time": stamp, "reason": "launching", "attempt": 1},
        ],
        provider="runpod",
        offer=offer,
        attempts=[
            {
                "attempt": 1,
                "provider": "runpod",
                "offer": offer,
                "provider_ref": "pod-1",
                "outcome": 4,
                "reason": "preempted",
                "create_time": stamp,
                "start_time": stamp,
                "end_time": stamp,
            },
            {"attempt": 2, "provider": "runpod", "offer": offer, "outcome": 2, "exit_code": 0, "create_time": stamp},
        ],
        cost={"estimated_usd": 3.5, "spent_usd": 0.0, "update_time": stamp},
        progress={
            "step": 0,
            "total_steps": 500,
            "epoch": 1,
            "total_epochs": 0,
            "metrics": {"loss": 2.5, "lr": 0.0},
            "eta": {"seconds": 12, "nanos": 7},
            "update_time": stamp,
        },
        latest_checkpoint="checkpoints/step-400/manifest.json",
        create_time=stamp,
        update_time=stamp,
        start_time=stamp,
        end_time=stamp,
        code_archive_sha256="cd" * 32,
        logs_truncated=True,
        log_bytes_dropped=42,
    )


def test_a_stored_job_loads_into_the_domain_record_and_is_written_back_unchanged(tmp_path) -> None:
    """A row as earlier versions wrote it (the Job message in `job`) loads into the engine's record with every field,
    zero-valued optional fields included, and a save writes the same message back."""
    full = _full_job()
    store = JobStore(tmp_path / "old.db")
    store.close()
    db = sqlite3.connect(tmp_path / "old.db")
    db.execute(
        "INSERT INTO jobs(job_id, request_id, spec_sha256, state, provider, budget_scope, create_time, job, meta)"
        " VALUES (?,?,?,?,?,?,?,?,?)",
        (full.job_id, "req", "sha", full.state, "runpod", "project:x", 1700000100.9, full.SerializeToString(), "{}"),
    )
    db.commit()
    db.close()
    store = JobStore(tmp_path / "old.db")
    rec = store.get(full.job_id)
    job = rec.job
    assert job.spec.code_dir == "/code" and job.spec.code_archive is None and job.spec.max_cost_usd == 0.0
    assert job.spec.restart_policy.recover_on_preemption is False and not job.spec.recover_on_preemption
    assert job.spec.max_duration.seconds == 7200 and job.spec.max_duration.nanos == 5
    assert job.attempts[1].exit_code == 0 and job.attempts[1].start_time is None and job.attempts[0].exit_code is None
    assert job.progress.step == 0 and job.progress.total_epochs == 0 and job.progress.eta == 12 * 10**9 + 7
    assert job.offer is not None and job.offer.price_observed_at == 1700000000 * 10**9 + 123456789
    assert convert.job_message(job) == full
    store.update(rec)
    store.close()
    store = JobStore(tmp_path / "old.db")
    again = store.get(full.job_id)
    assert again.job == job and convert.job_message(again.job) == full
    blob = sqlite3.connect(tmp_path / "old.db").execute("SELECT job FROM jobs").fetchone()[0]
    assert job_pb2.Job.FromString(blob) == full
    store.close()


def test_the_request_spec_is_measured_at_the_edge_and_round_trips() -> None:
    """convert.spec keeps the digest earlier versions stored (request-id idempotency) and the size without the code
    archive; the domain spec written back is the message without them."""
    import hashlib

    message = _full_job().spec
    message.ClearField("code_dir")
    message.code_archive = b"\x00" * 100
    spec = convert.spec(message)
    assert spec.code == "code_archive" and spec.code_archive == b"\x00" * 100
    assert spec.wire_sha256 == hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest()
    assert spec.wire_bytes == message.ByteSize() - 100
    assert convert.spec_message(spec) == message
    assert convert.spec(job_pb2.JobSpec()).code is None


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
    assert book.candidates[0].offer.offer_id == "a/b" and book.candidates[1].estimated_usd is None
    assert book.to_json() == stored
    assert JobBookkeeping.from_json({}).cancel_text == "cancelled"


async def test_group_commit_isolates_a_failing_insert(tmp_path) -> None:
    import asyncio
    import sqlite3

    from crucible.scheduler.persistence.jobdb import AsyncJobStore

    store = AsyncJobStore(JobStore(tmp_path / "g.db"))
    recs = [JobRecord(Job(job_id=f"g{i}", state=st.PENDING), "sha", "same" if i in (3, 4) else f"r{i}") for i in range(8)]
    results = await asyncio.gather(*(store.insert(r) for r in recs), return_exceptions=True)
    failed = [i for i, r in enumerate(results) if isinstance(r, sqlite3.IntegrityError)]
    assert failed == [4]  # the second use of request id "same" fails alone
    assert store.sync.count() == 7
    await store.close()
