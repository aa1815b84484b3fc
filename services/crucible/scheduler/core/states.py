"""The job state machine: which transitions are allowed, and which states are terminal.

States are the proto JobState numbers; the engine refuses any change this table does not list.
"""

from __future__ import annotations

from crucible.api.scheduler.v1 import job_pb2

JobState = job_pb2.JobState
PENDING = JobState.JOB_STATE_PENDING
PROVISIONING = JobState.JOB_STATE_PROVISIONING
RUNNING = JobState.JOB_STATE_RUNNING
RECOVERING = JobState.JOB_STATE_RECOVERING
SUCCEEDED = JobState.JOB_STATE_SUCCEEDED
FAILED = JobState.JOB_STATE_FAILED
CANCELLING = JobState.JOB_STATE_CANCELLING
CANCELLED = JobState.JOB_STATE_CANCELLED
UNSPECIFIED = JobState.JOB_STATE_UNSPECIFIED

TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

# from-state -> states it may move to. Provisioning may end at once (a remote run that finished between polls);
# a cancelled run that had already finished keeps its real outcome.
ALLOWED: dict[int, frozenset[int]] = {
    UNSPECIFIED: frozenset({PENDING}),
    PENDING: frozenset({PROVISIONING, FAILED, CANCELLED}),
    PROVISIONING: frozenset({RUNNING, RECOVERING, SUCCEEDED, FAILED, CANCELLING}),
    RUNNING: frozenset({SUCCEEDED, FAILED, RECOVERING, CANCELLING}),
    RECOVERING: frozenset({PROVISIONING, RUNNING, FAILED, CANCELLING, CANCELLED}),
    CANCELLING: frozenset({CANCELLED, SUCCEEDED, FAILED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELLED: frozenset(),
}


class IllegalTransition(Exception):
    """A transition the state machine does not allow (a bug in the engine, never the caller's fault)."""


def name(state: int) -> str:
    """Short upper-case name of a state, e.g. 'RUNNING'."""
    return JobState.Name(JobState.ValueType(state)).removeprefix("JOB_STATE_")


def is_terminal(state: int) -> bool:
    """True for SUCCEEDED, FAILED and CANCELLED."""
    return state in TERMINAL


def check_transition(from_state: int, to_state: int) -> None:
    """Raise IllegalTransition unless the table allows from_state -> to_state."""
    if to_state not in ALLOWED.get(from_state, frozenset()):
        raise IllegalTransition(f"{name(from_state)} -> {name(to_state)} is not allowed")
