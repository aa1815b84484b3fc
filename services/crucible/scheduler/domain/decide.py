"""The scheduler's decisions as one pure function: `decide(job, event) -> (job', actions)`.

Every transition the scheduler makes is decided here: a new job's first state, what the driving loop does next (launch
on an offer, fail over, re-find a launch lost in a crash, poll, stop a run), what a cancellation does, and what an ended
run leads to (success, restart, recovery, failure, cancellation). The engine carries out the actions in order: the
changes of the job's record first (under the job's lock), then the I/O ones (`IO_ACTIONS`), each of which reports back
an event.
"""

from __future__ import annotations

import dataclasses

from crucible.scheduler.domain import states
from crucible.scheduler.domain.job import (
    MAX_ATTEMPT_REASON,
    PROVIDER_WIDE,
    Attempt,
    JobState,
    LaunchError,
    Offer,
    Outcome,
    RunEnd,
)
from crucible.scheduler.domain.states import State

# --- events: what happened ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Admitted:
    """CreateJob checked the spec, chose offers and was admitted; `cost_note` says what the estimate is."""

    cost_note: str


@dataclasses.dataclass(frozen=True)
class Tick:
    """The driving loop asks what to do next."""


@dataclasses.dataclass(frozen=True)
class CancelRequested:
    """CancelJob on a job that has not ended (the API edge refuses it for an ended one)."""

    reason: str


@dataclasses.dataclass(frozen=True)
class FilesReady:
    """The job's files are prepared for launching (inputs staged, a fresh working folder on a relaunch)."""


@dataclasses.dataclass(frozen=True)
class FilesFailed:
    """The job's files could not be prepared."""

    error: str


@dataclasses.dataclass(frozen=True)
class Launched:
    """The provider accepted the attempt; `ref` names its run."""

    ref: str


@dataclasses.dataclass(frozen=True)
class LaunchFailed:
    """The launch of the attempt in progress failed (after the launcher's own retries of transient errors)."""

    kind: LaunchError
    error: str


@dataclasses.dataclass(frozen=True)
class LostRunFound:
    """The provider has the run of an attempt whose handle a crash kept from being recorded."""

    ref: str


@dataclasses.dataclass(frozen=True)
class LostRunMissing:
    """The provider has no run for such an attempt."""


@dataclasses.dataclass(frozen=True)
class RunStarted:
    """A poll saw the attempt's run running; `where` says on what, e.g. 'local (1234)'."""

    where: str


@dataclasses.dataclass(frozen=True)
class RunEnded:
    """A poll saw the attempt's run end."""

    end: RunEnd
    exit_code: int | None = None
    message: str = ""


@dataclasses.dataclass(frozen=True)
class RunClosed:
    """The ended run's outputs are collected and its usage billed: what comes next? (`max_duration_reached`: its
    running time over all attempts reached the job's limit of `max_duration_s`)."""

    end: RunEnd
    exit_code: int | None = None
    message: str = ""
    max_duration_reached: bool = False
    max_duration_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class LimitReached:
    """A limit stops the job: max duration, max cost or an exhausted hard budget."""

    reason: str


@dataclasses.dataclass(frozen=True)
class DriverCrashed:
    """The driving loop failed with an unexpected error (a bug): the job fails rather than stays stuck."""

    error: str
    kind: str = "Exception"


Event = (
    Admitted
    | Tick
    | CancelRequested
    | FilesReady
    | FilesFailed
    | Launched
    | LaunchFailed
    | LostRunFound
    | LostRunMissing
    | RunStarted
    | RunEnded
    | RunClosed
    | LimitReached
    | DriverCrashed
)

# --- actions: what to do --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Transition:
    """Move the job to `to` (recorded with its reason; saved)."""

    to: State
    reason: str


@dataclasses.dataclass(frozen=True)
class StartAttempt:
    """Record attempt `number` on `offer` (launch on offer X, first half)."""

    number: int
    offer: Offer


@dataclasses.dataclass(frozen=True)
class EndAttempt:
    """Close the attempt in progress (a no-op when none is)."""

    outcome: Outcome
    exit_code: int | None
    reason: str


@dataclasses.dataclass(frozen=True)
class Block:
    """Fail over: rule out the provider (`region` None) or one region of it for the next launches."""

    provider: str
    region: str | None


@dataclasses.dataclass(frozen=True)
class Relaunch:
    """Count a relaunch: `restart` after a non-zero exit, `recovery` after preemption or a lost run."""

    kind: str


@dataclasses.dataclass(frozen=True)
class RememberRun:
    """Record the run handle of the attempt (what a restarted scheduler re-attaches to)."""

    attempt: int
    ref: str


@dataclasses.dataclass(frozen=True)
class StampStart:
    """The attempt's (and, the first time, the job's) start time is now."""

    attempt: int


@dataclasses.dataclass(frozen=True)
class SetCancelReason:
    """Remember why the job is cancelled."""

    text: str


@dataclasses.dataclass(frozen=True)
class SetStopReason:
    """Remember the limit that stops the job."""

    text: str


@dataclasses.dataclass(frozen=True)
class Save:
    """Persist the job and wake its watchers."""


@dataclasses.dataclass(frozen=True)
class Wake:
    """Wake the job's driving loop (it may be waiting between polls)."""


@dataclasses.dataclass(frozen=True)
class PrepareFiles:
    """I/O: stage the inputs, give a relaunch a fresh working folder; reports FilesReady or FilesFailed."""


@dataclasses.dataclass(frozen=True)
class Submit:
    """I/O: launch attempt `attempt` on `offer` (launch on offer X, second half); reports Launched or LaunchFailed."""

    attempt: int
    offer: Offer
    resume: bool


@dataclasses.dataclass(frozen=True)
class FindLostRun:
    """I/O: ask the provider for the run of an attempt whose handle was never recorded; reports LostRunFound or
    LostRunMissing."""

    attempt: int


@dataclasses.dataclass(frozen=True)
class CancelRun:
    """I/O: ask the provider to stop the attempt's run (retried on the next poll when it fails)."""

    attempt: int


@dataclasses.dataclass(frozen=True)
class PollRun:
    """I/O: poll the attempt's run and mirror its output; reports RunStarted, RunEnded or LimitReached."""

    attempt: int


@dataclasses.dataclass(frozen=True)
class CloseRun:
    """I/O: the run ended: its last output, its outputs to the store, its machine given back when `release`."""

    attempt: int
    release: bool


@dataclasses.dataclass(frozen=True)
class Bill:
    """I/O: record the attempt's usage up to its end; may report LimitReached."""

    attempt: int


Action = (
    Transition
    | StartAttempt
    | EndAttempt
    | Block
    | Relaunch
    | RememberRun
    | StampStart
    | SetCancelReason
    | SetStopReason
    | Save
    | Wake
    | PrepareFiles
    | Submit
    | FindLostRun
    | CancelRun
    | PollRun
    | CloseRun
    | Bill
)

#: Actions that do I/O; the others only change the job's record.
IO_ACTIONS = (PrepareFiles, Submit, FindLostRun, CancelRun, PollRun, CloseRun, Bill)

#: Longest reason of a transition.
MAX_TRANSITION_REASON = 1000
LOST_LAUNCH = "the scheduler stopped during the launch and the provider has no run for it"

# --- the decision ---------------------------------------------------------------------------------------------


def decide(job: JobState, event: Event) -> tuple[JobState, list[Action]]:
    """The job's next state and the actions that get it there, for one event."""
    actions = _actions(job, event)
    new = job
    if isinstance(event, FilesReady):
        new = dataclasses.replace(new, files_ready=True)
    for action in actions:
        new = apply(new, action)
    return new, actions


def apply(job: JobState, action: Action) -> JobState:
    """What one action changes in the job (I/O actions change nothing until their event comes back)."""
    replace = dataclasses.replace
    match action:
        case Transition(to=to):
            states.check_transition(job.state, to)
            return replace(job, state=to, files_ready=job.files_ready and to != states.RECOVERING)
        case StartAttempt(number=number, offer=offer):
            return replace(job, attempts=(*job.attempts, Attempt(number, offer)))
        case EndAttempt(outcome=outcome, exit_code=exit_code, reason=reason):
            current = job.current
            if current is None:
                return job
            ended = replace(current, outcome=outcome, exit_code=exit_code, reason=reason)
            return replace(job, attempts=(*job.attempts[:-1], ended))
        case Block(provider=provider, region=None):
            return replace(job, blocked_providers=job.blocked_providers | {provider})
        case Block(provider=provider, region=str(region)):
            return replace(job, blocked_locations=job.blocked_locations | {(provider, region)})
        case Relaunch(kind="restart"):
            return replace(job, restarts_used=job.restarts_used + 1)
        case Relaunch():
            return replace(job, recoveries=job.recoveries + 1)
        case RememberRun(attempt=number):
            return _change_attempt(job, number, has_run=True)
        case StampStart(attempt=number):
            return _change_attempt(job, number, started=True)
        case SetCancelReason(text=text):
            return replace(job, cancel_reason=text)
        case SetStopReason(text=text):
            return replace(job, stop_reason=text)
    return job


def _change_attempt(job: JobState, number: int, has_run: bool | None = None, started: bool | None = None) -> JobState:
    def changed(a: Attempt) -> Attempt:
        return dataclasses.replace(
            a, has_run=a.has_run if has_run is None else has_run, started=a.started if started is None else started
        )

    attempts = tuple(changed(a) if a.number == number else a for a in job.attempts)
    return dataclasses.replace(job, attempts=attempts)


def _actions(job: JobState, event: Event) -> list[Action]:
    if states.is_terminal(job.state):
        return []  # an ended job changes no more (a late event from an I/O step is dropped)
    match event:
        case Admitted(cost_note=note):
            return [Transition(states.PENDING, _reason(f"created; {note}"))] if job.state == states.UNSPECIFIED else []
        case Tick():
            return _next_step(job)
        case CancelRequested(reason=reason):
            return _cancel(job, reason)
        case FilesReady():
            return []
        case FilesFailed(error=error):
            return [Transition(states.FAILED, _reason(f"the job's files could not be prepared: {error}"))]
        case Launched(ref=ref) | LostRunFound(ref=ref):
            current = job.current
            if current is None:
                return []
            wake: list[Action] = [Wake()] if job.state == states.CANCELLING else []
            return [RememberRun(current.number, ref), Save(), *wake]
        case LaunchFailed(kind=kind, error=error):
            return _launch_failed(job, kind, error)
        case LostRunMissing():
            if job.state == states.CANCELLING:
                return [EndAttempt(Outcome.STOPPED, None, _attempt_reason(job.cancel_text)), _cancelled(job)]
            return [EndAttempt(Outcome.LAUNCH_FAILED, None, LOST_LAUNCH), Save()]
        case RunStarted(where=where):
            current = job.current
            if current is None or job.state not in (states.PROVISIONING, states.RECOVERING):
                return []
            reason = f"attempt {current.number} running on {where}"
            return [StampStart(current.number), Transition(states.RUNNING, reason)]
        case RunEnded():
            current = job.current
            if current is None:
                return []
            release = current.number not in job.released and current.number not in job.cancel_sent
            return [CloseRun(current.number, release), Bill(current.number)]
        case RunClosed():
            return _settle(job, event)
        case LimitReached(reason=reason):
            return [] if job.stop_reason else [SetStopReason(reason), Save(), Wake()]
        case DriverCrashed(error=error, kind=kind):
            stop = EndAttempt(Outcome.STOPPED, None, _attempt_reason(f"scheduler error: {error}"))
            return [stop, Transition(states.FAILED, _reason(f"scheduler error: {kind}: {error}"))]
    raise TypeError(f"not a scheduler event: {event!r}")


def _next_step(job: JobState) -> list[Action]:
    """What the driving loop does now: follow the run, re-find a lost launch, or launch on the next offer."""
    current = job.current
    if current is not None and current.has_run:
        stop: list[Action] = [CancelRun(current.number)] if job.stopping and current.number not in job.cancel_sent else []
        return [*stop, PollRun(current.number)]
    if current is not None:
        return [FindLostRun(current.number)]
    if job.state == states.CANCELLING:
        return [_cancelled(job)]
    if job.state not in (states.PENDING, states.PROVISIONING, states.RECOVERING):
        text = f"no run to follow in state {states.name(job.state)}"
        return [Transition(states.FAILED, f"scheduler error: RuntimeError: {text}")]
    if not job.files_ready:
        return [PrepareFiles()]
    offer = next((o for o in job.candidates if not job.is_blocked(o)), None)
    if offer is None:
        failures: list[str] = []
        for attempt in reversed(job.attempts):  # this run of launch failures
            if attempt.outcome != Outcome.LAUNCH_FAILED:
                break
            failures.insert(0, attempt.reason)
        detail = "; ".join(failures[-3:]) or "every offer's provider or location is blocked"
        return [Transition(states.FAILED, _reason(f"no offer could be launched: {detail}"))]
    number = len(job.attempts) + 1
    resume = job.resumes() or job.state == states.RECOVERING
    record: Action = (
        Save()
        if job.state == states.PROVISIONING
        else Transition(states.PROVISIONING, f"launching attempt {number} on {offer.offer_id}")
    )
    return [StartAttempt(number, offer), record, Submit(number, offer, resume)]


def _cancel(job: JobState, reason: str) -> list[Action]:
    """CancelJob: cancelled at once when nothing runs, else CANCELLING (the driving loop stops the run)."""
    if job.state == states.CANCELLING:
        return []
    nothing_runs = job.state == states.PENDING or (
        job.state == states.RECOVERING and (job.current is None or not job.current.has_run)
    )
    to = states.CANCELLED if nothing_runs else states.CANCELLING
    return [SetCancelReason(reason), Transition(to, reason), Wake()]


def _launch_failed(job: JobState, kind: LaunchError, error: str) -> list[Action]:
    """Fail over: the attempt ends, its provider or region is blocked, and the next offer is tried (next Tick)."""
    current = job.current
    if current is None:
        return []
    offer = current.offer
    actions: list[Action] = [
        EndAttempt(Outcome.LAUNCH_FAILED, None, _attempt_reason(error)),
        Block(offer.provider, None if kind in PROVIDER_WIDE else offer.region),
    ]
    if job.state == states.CANCELLING:
        return [*actions, _cancelled(job)]
    if kind == LaunchError.INVALID:
        return [*actions, Transition(states.FAILED, _reason(f"the provider rejected the job: {error}"))]
    return [*actions, Save()]


def _settle(job: JobState, event: RunClosed) -> list[Action]:
    """The next state after the attempt's run ended: succeeded, cancelled, stopped by a limit, restarted after a
    non-zero exit, recovered after preemption or a lost machine, or failed."""
    if not job.attempts:
        return []
    attempt = job.attempts[-1]
    number, code = attempt.number, event.exit_code
    detail = event.message or (f"exit status {code}" if code is not None else event.end.value)
    if event.end == RunEnd.SUCCEEDED:
        note = "finished before the cancellation took effect; " if job.state == states.CANCELLING else ""
        return [
            EndAttempt(Outcome.SUCCEEDED, 0, "exit status 0"),
            Transition(states.SUCCEEDED, f"{note}attempt {number} exited with status 0"),
        ]
    if job.state == states.CANCELLING:
        return [EndAttempt(Outcome.STOPPED, code, _attempt_reason(job.cancel_text)), _cancelled(job)]
    if job.stop_reason:
        return [
            EndAttempt(Outcome.STOPPED, code, _attempt_reason(job.stop_reason)),
            Transition(states.FAILED, _reason(f"stopped: {job.stop_reason}")),
        ]
    limit_hit = event.message == "time limit reached" or event.max_duration_reached
    if event.end == RunEnd.FAILED and limit_hit:
        text = f"maximum duration {event.max_duration_s:.0f}s reached"
        return [EndAttempt(Outcome.STOPPED, code, text), Transition(states.FAILED, f"stopped: {text}")]
    if event.end == RunEnd.FAILED:
        end: Action = EndAttempt(Outcome.USER_ERROR, code, _attempt_reason(detail))
        used, limit = job.restarts_used, job.policy.max_restarts_on_errors
        if used < limit:
            return [end, Relaunch("restart"), Transition(states.RECOVERING, _reason(f"{detail} (restart {used + 1} of {limit})"))]
        suffix = f" (restart limit {limit} reached)" if limit else ""
        return [end, Transition(states.FAILED, _reason(f"attempt {number}: {detail}{suffix}"))]
    # PREEMPTED, or CANCELLED by the provider on its own
    lost = not attempt.offer.spot or event.end == RunEnd.CANCELLED
    provider = attempt.offer.provider
    what = (f"lost by {provider}" if lost else f"preempted by {provider}") + (f": {detail}" if detail else "")
    end = EndAttempt(Outcome.LOST if lost else Outcome.PREEMPTED, code, _attempt_reason(what))
    recover = job.policy.recover_on_preemption
    if recover and job.recoveries < job.policy.max_recoveries:
        reason = _reason(f"{what}; relaunching to resume from the latest checkpoint")
        return [end, Relaunch("recovery"), Transition(states.RECOVERING, reason)]
    why = "recovery disabled" if not recover else f"{job.recoveries} recoveries already"
    return [end, Transition(states.FAILED, _reason(f"{what} ({why})"))]


def _cancelled(job: JobState) -> Transition:
    return Transition(states.CANCELLED, job.cancel_text)


def _reason(text: str) -> str:
    return text[:MAX_TRANSITION_REASON]


def _attempt_reason(text: str) -> str:
    return text[:MAX_ATTEMPT_REASON]
