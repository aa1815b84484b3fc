"""The edge between the stored Job message and the domain types: what decide() sees, and what its actions write back.

Round trips through the Job message, the format the job database stores (existing state folders still load).
"""

from __future__ import annotations

from crucible.api.cost.v1 import offer_pb2
from crucible.api.scheduler.v1 import job_pb2
from crucible.runtime.convert import unix_seconds
from crucible.scheduler import convert
from crucible.scheduler.domain import states
from crucible.scheduler.domain.job import MAX_ATTEMPT_REASON, Offer, Outcome
from crucible.scheduler.persistence.records import JobBookkeeping

SPOT = offer_pb2.Offer(offer_id="lambda/a100/us-east", provider="lambda", region="us-east", spot=True, price_source="catalog")
FREE = offer_pb2.Offer(offer_id="local/cpu", provider="local", price_source="unknown: no cost service")


def _running_job() -> job_pb2.Job:
    job = job_pb2.Job(job_id="job-1", state=job_pb2.JOB_STATE_PROVISIONING)
    convert.add_attempt(job, 1, SPOT, now=100.0)
    return job


def test_an_attempt_written_and_read_back_is_the_same_domain_attempt() -> None:
    job = _running_job()
    assert (job.provider, job.offer.offer_id) == ("lambda", SPOT.offer_id)
    book = JobBookkeeping(restarts_used=1, blocked_providers=["runpod"])
    view = convert.job_state(job, book, [SPOT, FREE], files_ready=True, max_recoveries=3)
    assert view.state == states.PROVISIONING
    assert view.candidates == (Offer(SPOT.offer_id, "lambda", "us-east", True), Offer("local/cpu", "local", "", False))
    (attempt,) = view.attempts
    assert (attempt.number, attempt.outcome, attempt.started, attempt.has_run) == (1, Outcome.IN_PROGRESS, False, False)
    assert (view.restarts_used, view.blocked_providers, view.files_ready) == (1, frozenset({"runpod"}), True)
    assert view.policy.recover_on_preemption and view.policy.max_recoveries == 3

    convert.stamp_start(job, 1, now=110.0)
    convert.close_attempt(job, Outcome.USER_ERROR, 3, "x" * 2000, now=150.0)
    again = convert.job_state(job_pb2.Job.FromString(job.SerializeToString()), book, [SPOT], False, 3)
    (closed,) = again.attempts
    assert (closed.outcome, closed.exit_code, closed.started, len(closed.reason)) == (
        Outcome.USER_ERROR,
        3,
        True,
        MAX_ATTEMPT_REASON,
    )
    assert unix_seconds(job.start_time) == 110.0 and unix_seconds(job.attempts[0].end_time) == 150.0


def test_closing_keeps_the_runs_real_end_and_is_a_no_op_without_an_attempt_in_progress() -> None:
    job = _running_job()
    convert.stamp_start(job, 1, now=110.0)
    convert.stamp_run_end(job, 1, ended=120.0)  # the run ended while the scheduler was down
    convert.close_attempt(job, Outcome.SUCCEEDED, 0, "exit 0", now=500.0)
    assert unix_seconds(job.attempts[0].end_time) == 120.0
    convert.close_attempt(job, Outcome.LOST, None, "again", now=600.0)
    assert job.attempts[0].outcome == Outcome.SUCCEEDED and job.attempts[0].reason == "exit 0"


def test_a_transition_is_recorded_and_a_terminal_one_ends_the_job() -> None:
    job = _running_job()
    convert.add_transition(job, states.RUNNING, "started", now=200.0)
    assert not job.HasField("end_time")
    convert.add_transition(job, states.FAILED, "exit 3", now=300.0)
    assert job.state == job_pb2.JOB_STATE_FAILED and unix_seconds(job.end_time) == 300.0
    assert [(t.from_state, t.to_state, t.reason, t.attempt) for t in job.transitions] == [
        (job_pb2.JOB_STATE_PROVISIONING, job_pb2.JOB_STATE_RUNNING, "started", 1),
        (job_pb2.JOB_STATE_RUNNING, job_pb2.JOB_STATE_FAILED, "exit 3", 1),
    ]


def test_run_periods_leave_out_attempts_that_never_started_and_say_whether_usage_can_be_billed() -> None:
    job = _running_job()
    convert.stamp_start(job, 1, now=110.0)
    convert.close_attempt(job, Outcome.PREEMPTED, None, "reclaimed", now=170.0)
    convert.add_attempt(job, 2, FREE, now=180.0)  # provisioning: no start yet
    assert convert.run_periods(job) == [convert.Period(1, 110.0, 170.0, SPOT.offer_id, True)]
    assert convert.attempt_began(job, 2) == 180.0
    convert.stamp_start(job, 2, now=190.0)
    assert convert.run_periods(job)[-1] == convert.Period(2, 190.0, None, "local/cpu", False)
    assert convert.max_cost_usd(job) is None
    job.spec.max_cost_usd = 2.5
    assert convert.max_cost_usd(job) == 2.5
