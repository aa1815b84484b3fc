"""The engine's record (domain/record.py) and its edge: what decide() sees of it, what its actions write into it, and
round trips through the Job message, the format the job database stores (existing state folders still load).
"""

from __future__ import annotations

import dataclasses

from crucible.api.scheduler.v1 import job_pb2
from crucible.runtime.convert import unix_seconds
from crucible.scheduler import convert
from crucible.scheduler.domain import states
from crucible.scheduler.domain.job import MAX_ATTEMPT_REASON, Offer, Outcome
from crucible.scheduler.domain.record import Job, Period, unix_s
from crucible.scheduler.engine.lifecycle import job_state
from crucible.scheduler.persistence.records import JobBookkeeping

SPOT = Offer("lambda/a100/us-east", "lambda", "us-east", True, price_source="catalog")
FREE = Offer("local/cpu", "local", price_source="unknown: no cost service")


def _running_job() -> Job:
    job = Job(job_id="job-1", state=states.PROVISIONING)
    job.add_attempt(1, SPOT, now=100.0)
    return job


def _stored(job: Job) -> Job:
    """The job as the job database writes and reads it back."""
    return convert.job(job_pb2.Job.FromString(convert.job_message(job).SerializeToString()))


def test_an_attempt_written_and_read_back_is_the_same_domain_attempt() -> None:
    job = _running_job()
    assert (job.provider, job.offer) == ("lambda", SPOT)
    book = JobBookkeeping(restarts_used=1, blocked_providers=["runpod"])
    view = job_state(job, book, [SPOT, FREE], files_ready=True, max_recoveries=3)
    assert view.state == states.PROVISIONING
    assert view.candidates == (SPOT, FREE)
    (attempt,) = view.attempts
    assert (attempt.number, attempt.outcome, attempt.started, attempt.has_run) == (1, Outcome.IN_PROGRESS, False, False)
    assert (view.restarts_used, view.blocked_providers, view.files_ready) == (1, frozenset({"runpod"}), True)
    assert view.policy.recover_on_preemption and view.policy.max_recoveries == 3

    job.stamp_start(1, now=110.0)
    job.close_attempt(Outcome.USER_ERROR, 3, "x" * 2000, now=150.0)
    stored = _stored(job)
    assert stored == job
    again = job_state(stored, book, [SPOT], False, 3)
    (closed,) = again.attempts
    assert (closed.outcome, closed.exit_code, closed.started, len(closed.reason), closed.offer) == (
        Outcome.USER_ERROR,
        3,
        True,
        MAX_ATTEMPT_REASON,
        SPOT,
    )
    message = convert.job_message(job)
    assert unix_seconds(message.start_time) == 110.0 and unix_seconds(message.attempts[0].end_time) == 150.0
    assert message.attempts[0].offer.offer_id == SPOT.offer_id and message.attempts[0].exit_code == 3


def test_closing_keeps_the_runs_real_end_and_is_a_no_op_without_an_attempt_in_progress() -> None:
    job = _running_job()
    job.stamp_start(1, now=110.0)
    job.stamp_run_end(1, ended=120.0)  # the run ended while the scheduler was down
    job.close_attempt(Outcome.SUCCEEDED, 0, "exit 0", now=500.0)
    assert unix_s(job.attempts[0].end_time) == 120.0
    job.close_attempt(Outcome.LOST, None, "again", now=600.0)
    assert job.attempts[0].outcome == Outcome.SUCCEEDED and job.attempts[0].reason == "exit 0"
    assert _stored(job).attempts[0].exit_code == 0  # a zero exit status is kept, not read back as unset


def test_a_transition_is_recorded_and_a_terminal_one_ends_the_job() -> None:
    job = _running_job()
    job.add_transition(states.RUNNING, "started", now=200.0)
    assert job.end_time is None and not convert.job_message(job).HasField("end_time")
    job.add_transition(states.FAILED, "exit 3", now=300.0)
    message = convert.job_message(job)
    assert message.state == job_pb2.JOB_STATE_FAILED and unix_seconds(message.end_time) == 300.0
    assert [(t.from_state, t.to_state, t.reason, t.attempt) for t in message.transitions] == [
        (job_pb2.JOB_STATE_PROVISIONING, job_pb2.JOB_STATE_RUNNING, "started", 1),
        (job_pb2.JOB_STATE_RUNNING, job_pb2.JOB_STATE_FAILED, "exit 3", 1),
    ]


def test_run_periods_leave_out_attempts_that_never_started_and_say_whether_usage_can_be_billed() -> None:
    job = _running_job()
    job.stamp_start(1, now=110.0)
    job.close_attempt(Outcome.PREEMPTED, None, "reclaimed", now=170.0)
    job.add_attempt(2, FREE, now=180.0)  # provisioning: no start yet
    assert job.run_periods() == [Period(1, 110.0, 170.0, SPOT.offer_id, True)]
    assert job.attempt_began(2) == 180.0
    job.stamp_start(2, now=190.0)
    assert job.run_periods()[-1] == Period(2, 190.0, None, "local/cpu", False)
    assert job.spec.max_cost_usd is None
    job.spec = dataclasses.replace(job.spec, max_cost_usd=2.5)
    assert _stored(job).spec.max_cost_usd == 2.5


def test_a_copy_handed_out_does_not_change_with_the_record() -> None:
    job = _running_job()
    snapshot = job.copy()
    job.stamp_start(1, now=110.0)
    job.progress.metrics["loss"] = 1.0
    job.add_transition(states.RUNNING, "started", now=110.0)
    assert snapshot.attempts[0].start_time is None and not snapshot.progress.metrics and not snapshot.transitions
    assert snapshot.state == states.PROVISIONING and job.state == states.RUNNING
