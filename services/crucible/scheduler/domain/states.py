"""The job state machine: which transitions are allowed, and which states are terminal.

States are plain integers with the numbers of the API's `JobState`, so the edge converts them by value.
"""

from __future__ import annotations

import enum


class State(enum.IntEnum):
    """A job's state (numbers as in `crucible.scheduler.v1.JobState`)."""

    UNSPECIFIED = 0
    PENDING = 1
    PROVISIONING = 2
    RUNNING = 3
    RECOVERING = 4
    SUCCEEDED = 5
    FAILED = 6
    CANCELLING = 7
    CANCELLED = 8


PENDING = State.PENDING
PROVISIONING = State.PROVISIONING
RUNNING = State.RUNNING
RECOVERING = State.RECOVERING
SUCCEEDED = State.SUCCEEDED
FAILED = State.FAILED
CANCELLING = State.CANCELLING
CANCELLED = State.CANCELLED
UNSPECIFIED = State.UNSPECIFIED

TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

# from-state -> states it may move to. Provisioning may end at once (a remote run that finished between polls);
# a cancelled run that had already finished keeps its real outcome.
ALLOWED: dict[int, frozenset[State]] = {
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
    """A transition the state machine does not allow (a bug in the scheduler, never the caller's fault)."""


def name(state: int) -> str:
    """Short upper-case name of a state, e.g. 'RUNNING' (the number itself for one this version does not know)."""
    try:
        return State(state).name
    except ValueError:
        return str(state)


def is_terminal(state: int) -> bool:
    """True for SUCCEEDED, FAILED and CANCELLED."""
    return state in TERMINAL


def check_transition(from_state: int, to_state: int) -> None:
    """Raise IllegalTransition unless the table allows from_state -> to_state."""
    if to_state not in ALLOWED.get(from_state, frozenset()):
        raise IllegalTransition(f"{name(from_state)} -> {name(to_state)} is not allowed")
