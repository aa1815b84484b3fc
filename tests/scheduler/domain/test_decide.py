"""The scheduler's decisions as tables of (state, event) -> (state, actions), with no store and no provider.

Each row is one transition the scheduler makes: launching and failing over between offers, re-finding a launch lost in
a crash, following and stopping a run, and what an ended run leads to (success, restart, recovery, failure,
cancellation). Most rows are the engine tests' scenarios (tests/scheduler/engine/test_engine.py), one step at a time.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from crucible.api.scheduler.v1 import job_pb2
from crucible.scheduler.domain import decide as d
from crucible.scheduler.domain import states as st
from crucible.scheduler.domain.job import Attempt, JobState, LaunchError, Offer, Outcome, Policy, RunEnd

A = Offer("lambda/gpu_1x_a10/us-east-1/on-demand", "lambda", "us-east-1")
B = Offer("lambda/gpu_1x_a10/us-west-1/on-demand", "lambda", "us-west-1")
C = Offer("runpod/gpu_1x_a10//on-demand", "runpod", "")
S = Offer("runpod/gpu_1x_a10//spot", "runpod", "", spot=True)


def job(state: st.State, *attempts: Attempt, **kw) -> JobState:
    return JobState(state, tuple(attempts), candidates=kw.pop("candidates", (A, B, C)), **kw)


def on(offer: Offer, n: int = 1, **kw) -> Attempt:
    """An attempt in progress whose run is recorded."""
    return Attempt(n, offer, has_run=kw.pop("has_run", True), **kw)


def failed_launch(offer: Offer, n: int, reason: str) -> Attempt:
    return Attempt(n, offer, Outcome.LAUNCH_FAILED, reason=reason)


RUNNING_ON_C = job(st.RUNNING, on(C, started=True))
SPOT_RUNNING = job(st.RUNNING, on(S, started=True), candidates=(S,))
POLICY_1 = Policy(max_restarts_on_errors=1)

# (name, state before, event, (state after, changes in the state), actions)
ROWS: list[tuple[str, JobState, d.Event, st.State, dict, list[d.Action]]] = [
    (
        "an admitted job is pending",
        JobState(st.UNSPECIFIED),
        d.Admitted("estimated $1.0000 on x for 1.00 h"),
        st.PENDING,
        {},
        [d.Transition(st.PENDING, "created; estimated $1.0000 on x for 1.00 h")],
    ),
    # --- launching and failing over --------------------------------------------------------------------------
    ("pending prepares files first", job(st.PENDING), d.Tick(), st.PENDING, {}, [d.PrepareFiles()]),
    ("files ready", job(st.PENDING), d.FilesReady(), st.PENDING, {"files_ready": True}, []),
    (
        "files that cannot be prepared fail the job",
        job(st.PENDING),
        d.FilesFailed("disk full"),
        st.FAILED,
        {},
        [d.Transition(st.FAILED, "the job's files could not be prepared: disk full")],
    ),
    (
        "launch on the first offer",
        job(st.PENDING, files_ready=True),
        d.Tick(),
        st.PROVISIONING,
        {"attempts": (Attempt(1, A),)},
        [d.StartAttempt(1, A), d.Transition(st.PROVISIONING, f"launching attempt 1 on {A.offer_id}"), d.Submit(1, A, False)],
    ),
    (
        "capacity blocks only the region",
        job(st.PROVISIONING, Attempt(1, A)),
        d.LaunchFailed(LaunchError.CAPACITY, "no capacity"),
        st.PROVISIONING,
        {
            "attempts": (failed_launch(A, 1, "no capacity"),),
            "blocked_locations": frozenset({("lambda", "us-east-1")}),
        },
        [d.EndAttempt(Outcome.LAUNCH_FAILED, None, "no capacity"), d.Block("lambda", "us-east-1"), d.Save()],
    ),
    (
        "quota blocks the whole provider",
        job(st.PROVISIONING, Attempt(1, A)),
        d.LaunchFailed(LaunchError.QUOTA, "quota"),
        st.PROVISIONING,
        {"attempts": (failed_launch(A, 1, "quota"),), "blocked_providers": frozenset({"lambda"})},
        [d.EndAttempt(Outcome.LAUNCH_FAILED, None, "quota"), d.Block("lambda", None), d.Save()],
    ),
    (
        "fail over to the next offer not blocked",
        job(
            st.PROVISIONING,
            failed_launch(A, 1, "no capacity"),
            blocked_locations=frozenset({("lambda", "us-east-1")}),
            files_ready=True,
        ),
        d.Tick(),
        st.PROVISIONING,
        {"attempts": (failed_launch(A, 1, "no capacity"), Attempt(2, B))},
        [d.StartAttempt(2, B), d.Save(), d.Submit(2, B, False)],
    ),
    (
        "a blocked provider is skipped everywhere",
        job(st.PROVISIONING, failed_launch(A, 1, "quota"), blocked_providers=frozenset({"lambda"}), files_ready=True),
        d.Tick(),
        st.PROVISIONING,
        {"attempts": (failed_launch(A, 1, "quota"), Attempt(2, C))},
        [d.StartAttempt(2, C), d.Save(), d.Submit(2, C, False)],
    ),
    (
        "no offer left fails the job with the last launch errors",
        job(
            st.PROVISIONING,
            failed_launch(A, 1, "auth a"),
            failed_launch(B, 2, "auth b"),
            candidates=(A, B),
            blocked_providers=frozenset({"lambda"}),
            files_ready=True,
        ),
        d.Tick(),
        st.FAILED,
        {},
        [d.Transition(st.FAILED, "no offer could be launched: auth a; auth b")],
    ),
    (
        "every offer blocked from the start",
        job(st.PENDING, candidates=(A,), blocked_providers=frozenset({"lambda"}), files_ready=True),
        d.Tick(),
        st.FAILED,
        {},
        [d.Transition(st.FAILED, "no offer could be launched: every offer's provider or location is blocked")],
    ),
    (
        "the provider rejects the job",
        job(st.PROVISIONING, Attempt(1, A)),
        d.LaunchFailed(LaunchError.INVALID, "bad image"),
        st.FAILED,
        {"attempts": (failed_launch(A, 1, "bad image"),), "blocked_locations": frozenset({("lambda", "us-east-1")})},
        [
            d.EndAttempt(Outcome.LAUNCH_FAILED, None, "bad image"),
            d.Block("lambda", "us-east-1"),
            d.Transition(st.FAILED, "the provider rejected the job: bad image"),
        ],
    ),
    (
        "a launch failing after CancelJob cancels",
        job(st.CANCELLING, Attempt(1, A), cancel_reason="cancelled: enough"),
        d.LaunchFailed(LaunchError.CAPACITY, "no capacity"),
        st.CANCELLED,
        {"attempts": (failed_launch(A, 1, "no capacity"),), "blocked_locations": frozenset({("lambda", "us-east-1")})},
        [
            d.EndAttempt(Outcome.LAUNCH_FAILED, None, "no capacity"),
            d.Block("lambda", "us-east-1"),
            d.Transition(st.CANCELLED, "cancelled: enough"),
        ],
    ),
    (
        "launched: the run is recorded",
        job(st.PROVISIONING, Attempt(1, C)),
        d.Launched("runpod-1"),
        st.PROVISIONING,
        {"attempts": (on(C),)},
        [d.RememberRun(1, "runpod-1"), d.Save()],
    ),
    (
        "launched after CancelJob: recorded, and the loop woken to stop it",
        job(st.CANCELLING, Attempt(1, C)),
        d.Launched("runpod-1"),
        st.CANCELLING,
        {"attempts": (on(C),)},
        [d.RememberRun(1, "runpod-1"), d.Save(), d.Wake()],
    ),
    (
        "a relaunch after preemption resumes",
        job(st.RECOVERING, Attempt(1, S, Outcome.PREEMPTED, started=True), candidates=(S,), files_ready=True),
        d.Tick(),
        st.PROVISIONING,
        {"attempts": (Attempt(1, S, Outcome.PREEMPTED, started=True), Attempt(2, S))},
        [d.StartAttempt(2, S), d.Transition(st.PROVISIONING, f"launching attempt 2 on {S.offer_id}"), d.Submit(2, S, True)],
    ),
    # --- a launch lost in a crash ------------------------------------------------------------------------------
    (
        "an attempt without a recorded run is looked up",
        job(st.PROVISIONING, on(A, has_run=False)),
        d.Tick(),
        st.PROVISIONING,
        {},
        [d.FindLostRun(1)],
    ),
    (
        "the lost run is found: re-attach",
        job(st.PROVISIONING, on(A, has_run=False)),
        d.LostRunFound("lambda-1"),
        st.PROVISIONING,
        {"attempts": (on(A),)},
        [d.RememberRun(1, "lambda-1"), d.Save()],
    ),
    (
        "no such run: the attempt failed to launch (the next Tick launches again)",
        job(st.PROVISIONING, on(A, has_run=False)),
        d.LostRunMissing(),
        st.PROVISIONING,
        {"attempts": (failed_launch(A, 1, d.LOST_LAUNCH),)},
        [d.EndAttempt(Outcome.LAUNCH_FAILED, None, d.LOST_LAUNCH), d.Save()],
    ),
    (
        "no such run while cancelling: cancelled",
        job(st.CANCELLING, on(A, has_run=False), cancel_reason="cancelled: stop"),
        d.LostRunMissing(),
        st.CANCELLED,
        {"attempts": (Attempt(1, A, Outcome.STOPPED, reason="cancelled: stop"),)},
        [d.EndAttempt(Outcome.STOPPED, None, "cancelled: stop"), d.Transition(st.CANCELLED, "cancelled: stop")],
    ),
    # --- following and stopping a run ---------------------------------------------------------------------------
    ("a recorded run is polled", RUNNING_ON_C, d.Tick(), st.RUNNING, {}, [d.PollRun(1)]),
    (
        "the run is seen running",
        job(st.PROVISIONING, on(C)),
        d.RunStarted("runpod (runpod-1)"),
        st.RUNNING,
        {"attempts": (on(C, started=True),)},
        [d.StampStart(1), d.Transition(st.RUNNING, "attempt 1 running on runpod (runpod-1)")],
    ),
    ("running again changes nothing", RUNNING_ON_C, d.RunStarted("runpod (runpod-1)"), st.RUNNING, {}, []),
    (
        "a cancelling job's run is stopped, then polled",
        job(st.CANCELLING, on(C, started=True)),
        d.Tick(),
        st.CANCELLING,
        {},
        [d.CancelRun(1), d.PollRun(1)],
    ),
    (
        "the stop is sent once",
        job(st.CANCELLING, on(C, started=True), cancel_sent=frozenset({1})),
        d.Tick(),
        st.CANCELLING,
        {},
        [d.PollRun(1)],
    ),
    (
        "a limit stops the run too",
        job(st.RUNNING, on(C, started=True), stop_reason="hard budget b1 limit $0.10 reached"),
        d.Tick(),
        st.RUNNING,
        {},
        [d.CancelRun(1), d.PollRun(1)],
    ),
    (
        "a limit reached is remembered and wakes the loop",
        RUNNING_ON_C,
        d.LimitReached("hard budget b1 limit $0.10 reached"),
        st.RUNNING,
        {"stop_reason": "hard budget b1 limit $0.10 reached"},
        [d.SetStopReason("hard budget b1 limit $0.10 reached"), d.Save(), d.Wake()],
    ),
    (
        "the first limit reached stays",
        dataclasses.replace(RUNNING_ON_C, stop_reason="max cost"),
        d.LimitReached("hard budget"),
        st.RUNNING,
        {},
        [],
    ),
    (
        "an ended run is closed (outputs, machine given back) and billed",
        RUNNING_ON_C,
        d.RunEnded(RunEnd.SUCCEEDED, 0),
        st.RUNNING,
        {},
        [d.CloseRun(1, True), d.Bill(1)],
    ),
    (
        "a run stopped by us is not released again",
        dataclasses.replace(RUNNING_ON_C, state=st.CANCELLING, cancel_sent=frozenset({1})),
        d.RunEnded(RunEnd.CANCELLED, None),
        st.CANCELLING,
        {},
        [d.CloseRun(1, False), d.Bill(1)],
    ),
    # --- what an ended run leads to --------------------------------------------------------------------------------
    (
        "success",
        RUNNING_ON_C,
        d.RunClosed(RunEnd.SUCCEEDED, 0),
        st.SUCCEEDED,
        {"attempts": (on(C, started=True, outcome=Outcome.SUCCEEDED, exit_code=0, reason="exit status 0"),)},
        [d.EndAttempt(Outcome.SUCCEEDED, 0, "exit status 0"), d.Transition(st.SUCCEEDED, "attempt 1 exited with status 0")],
    ),
    (
        "success that beat the cancellation",
        dataclasses.replace(RUNNING_ON_C, state=st.CANCELLING),
        d.RunClosed(RunEnd.SUCCEEDED, 0),
        st.SUCCEEDED,
        {"attempts": (on(C, started=True, outcome=Outcome.SUCCEEDED, exit_code=0, reason="exit status 0"),)},
        [
            d.EndAttempt(Outcome.SUCCEEDED, 0, "exit status 0"),
            d.Transition(st.SUCCEEDED, "finished before the cancellation took effect; attempt 1 exited with status 0"),
        ],
    ),
    (
        "a non-zero exit restarts within the limit",
        dataclasses.replace(RUNNING_ON_C, policy=POLICY_1),
        d.RunClosed(RunEnd.FAILED, 3),
        st.RECOVERING,
        {
            "restarts_used": 1,
            "attempts": (on(C, started=True, outcome=Outcome.USER_ERROR, exit_code=3, reason="exit status 3"),),
        },
        [
            d.EndAttempt(Outcome.USER_ERROR, 3, "exit status 3"),
            d.Relaunch("restart"),
            d.Transition(st.RECOVERING, "exit status 3 (restart 1 of 1)"),
        ],
    ),
    (
        "a non-zero exit past the restart limit fails",
        job(st.RUNNING, Attempt(1, C, Outcome.USER_ERROR), on(C, 2, started=True), policy=POLICY_1, restarts_used=1),
        d.RunClosed(RunEnd.FAILED, 3),
        st.FAILED,
        {
            "attempts": (
                Attempt(1, C, Outcome.USER_ERROR),
                on(C, 2, started=True, outcome=Outcome.USER_ERROR, exit_code=3, reason="exit status 3"),
            )
        },
        [
            d.EndAttempt(Outcome.USER_ERROR, 3, "exit status 3"),
            d.Transition(st.FAILED, "attempt 2: exit status 3 (restart limit 1 reached)"),
        ],
    ),
    (
        "no restart policy: the first failure fails",
        RUNNING_ON_C,
        d.RunClosed(RunEnd.FAILED, 1, "exit status 1"),
        st.FAILED,
        {"attempts": (on(C, started=True, outcome=Outcome.USER_ERROR, exit_code=1, reason="exit status 1"),)},
        [d.EndAttempt(Outcome.USER_ERROR, 1, "exit status 1"), d.Transition(st.FAILED, "attempt 1: exit status 1")],
    ),
    (
        "a preempted spot run is recovered",
        SPOT_RUNNING,
        d.RunClosed(RunEnd.PREEMPTED, None, "spot reclaimed"),
        st.RECOVERING,
        {
            "recoveries": 1,
            "attempts": (on(S, started=True, outcome=Outcome.PREEMPTED, reason="preempted by runpod: spot reclaimed"),),
        },
        [
            d.EndAttempt(Outcome.PREEMPTED, None, "preempted by runpod: spot reclaimed"),
            d.Relaunch("recovery"),
            d.Transition(st.RECOVERING, "preempted by runpod: spot reclaimed; relaunching to resume from the latest checkpoint"),
        ],
    ),
    (
        "an on-demand machine that goes away is lost, and recovered",
        RUNNING_ON_C,
        d.RunClosed(RunEnd.PREEMPTED, None, "host down"),
        st.RECOVERING,
        {"recoveries": 1, "attempts": (on(C, started=True, outcome=Outcome.LOST, reason="lost by runpod: host down"),)},
        [
            d.EndAttempt(Outcome.LOST, None, "lost by runpod: host down"),
            d.Relaunch("recovery"),
            d.Transition(st.RECOVERING, "lost by runpod: host down; relaunching to resume from the latest checkpoint"),
        ],
    ),
    (
        "recovery disabled by the job",
        dataclasses.replace(SPOT_RUNNING, policy=Policy(recover_on_preemption=False)),
        d.RunClosed(RunEnd.PREEMPTED, None, "spot reclaimed"),
        st.FAILED,
        {"attempts": (on(S, started=True, outcome=Outcome.PREEMPTED, reason="preempted by runpod: spot reclaimed"),)},
        [
            d.EndAttempt(Outcome.PREEMPTED, None, "preempted by runpod: spot reclaimed"),
            d.Transition(st.FAILED, "preempted by runpod: spot reclaimed (recovery disabled)"),
        ],
    ),
    (
        "recoveries used up",
        dataclasses.replace(SPOT_RUNNING, policy=Policy(max_recoveries=2), recoveries=2),
        d.RunClosed(RunEnd.PREEMPTED, None, "spot reclaimed"),
        st.FAILED,
        {"attempts": (on(S, started=True, outcome=Outcome.PREEMPTED, reason="preempted by runpod: spot reclaimed"),)},
        [
            d.EndAttempt(Outcome.PREEMPTED, None, "preempted by runpod: spot reclaimed"),
            d.Transition(st.FAILED, "preempted by runpod: spot reclaimed (2 recoveries already)"),
        ],
    ),
    (
        "a cancelled job's stopped run",
        dataclasses.replace(RUNNING_ON_C, state=st.CANCELLING, cancel_reason="cancelled: enough"),
        d.RunClosed(RunEnd.CANCELLED, 143),
        st.CANCELLED,
        {"attempts": (on(C, started=True, outcome=Outcome.STOPPED, exit_code=143, reason="cancelled: enough"),)},
        [d.EndAttempt(Outcome.STOPPED, 143, "cancelled: enough"), d.Transition(st.CANCELLED, "cancelled: enough")],
    ),
    (
        "a run stopped by a limit fails the job with it",
        dataclasses.replace(RUNNING_ON_C, stop_reason="hard budget b1 limit $0.10 reached"),
        d.RunClosed(RunEnd.CANCELLED, None),
        st.FAILED,
        {"attempts": (on(C, started=True, outcome=Outcome.STOPPED, reason="hard budget b1 limit $0.10 reached"),)},
        [
            d.EndAttempt(Outcome.STOPPED, None, "hard budget b1 limit $0.10 reached"),
            d.Transition(st.FAILED, "stopped: hard budget b1 limit $0.10 reached"),
        ],
    ),
    (
        "the time limit",
        RUNNING_ON_C,
        d.RunClosed(RunEnd.FAILED, 124, "time limit reached", max_duration_reached=True, max_duration_s=60),
        st.FAILED,
        {"attempts": (on(C, started=True, outcome=Outcome.STOPPED, exit_code=124, reason="maximum duration 60s reached"),)},
        [
            d.EndAttempt(Outcome.STOPPED, 124, "maximum duration 60s reached"),
            d.Transition(st.FAILED, "stopped: maximum duration 60s reached"),
        ],
    ),
    # --- cancellation ------------------------------------------------------------------------------------------
    (
        "cancel a pending job: cancelled at once",
        job(st.PENDING),
        d.CancelRequested("cancelled: enough"),
        st.CANCELLED,
        {"cancel_reason": "cancelled: enough"},
        [d.SetCancelReason("cancelled: enough"), d.Transition(st.CANCELLED, "cancelled: enough"), d.Wake()],
    ),
    (
        "cancel a running job: cancelling until its run stops",
        RUNNING_ON_C,
        d.CancelRequested("cancelled: enough"),
        st.CANCELLING,
        {"cancel_reason": "cancelled: enough"},
        [d.SetCancelReason("cancelled: enough"), d.Transition(st.CANCELLING, "cancelled: enough"), d.Wake()],
    ),
    (
        "cancel a job between two attempts: cancelled at once",
        job(st.RECOVERING, Attempt(1, C, Outcome.PREEMPTED)),
        d.CancelRequested("cancelled: user request"),
        st.CANCELLED,
        {"cancel_reason": "cancelled: user request"},
        [d.SetCancelReason("cancelled: user request"), d.Transition(st.CANCELLED, "cancelled: user request"), d.Wake()],
    ),
    ("cancel twice: nothing more", job(st.CANCELLING, on(C)), d.CancelRequested("again"), st.CANCELLING, {}, []),
    (
        "cancelling with nothing launched",
        job(st.CANCELLING, failed_launch(A, 1, "x")),
        d.Tick(),
        st.CANCELLED,
        {},
        [d.Transition(st.CANCELLED, "cancelled")],
    ),
    # --- a bug in the loop, and ended jobs -----------------------------------------------------------------------
    (
        "the driving loop crashed",
        RUNNING_ON_C,
        d.DriverCrashed("boom", "KeyError"),
        st.FAILED,
        {"attempts": (on(C, started=True, outcome=Outcome.STOPPED, reason="scheduler error: boom"),)},
        [
            d.EndAttempt(Outcome.STOPPED, None, "scheduler error: boom"),
            d.Transition(st.FAILED, "scheduler error: KeyError: boom"),
        ],
    ),
    ("an ended job ignores a late event", job(st.SUCCEEDED, on(C)), d.Launched("x"), st.SUCCEEDED, {}, []),
    ("an ended job does nothing", job(st.FAILED), d.Tick(), st.FAILED, {}, []),
]


@pytest.mark.parametrize(
    ("before", "event", "after", "changes", "actions"), [row[1:] for row in ROWS], ids=[row[0] for row in ROWS]
)
def test_decision_table(before: JobState, event: d.Event, after: st.State, changes: dict, actions: list[d.Action]) -> None:
    new, got = d.decide(before, event)
    assert got == actions
    assert new == dataclasses.replace(before, state=after, **changes)


def test_a_relaunch_prepares_the_files_again() -> None:
    """Entering RECOVERING forgets the prepared files (a relaunch gets a fresh working folder)."""
    new, _ = d.decide(dataclasses.replace(SPOT_RUNNING, files_ready=True), d.RunClosed(RunEnd.PREEMPTED))
    assert new.state == st.RECOVERING and not new.files_ready
    assert d.decide(new, d.Tick())[1] == [d.PrepareFiles()]


def test_the_failover_story_folds_to_the_engine_tests_outcome() -> None:
    """The scenario of test_failover_blocks_failed_locations_and_providers, decided event by event."""
    state = job(st.PENDING, candidates=(A, B, Offer("lambda/eu", "lambda", "eu-1"), C))
    events: list[d.Event] = [
        d.Tick(),
        d.FilesReady(),
        d.Tick(),
        d.LaunchFailed(LaunchError.CAPACITY, "capacity"),
        d.Tick(),
        d.LaunchFailed(LaunchError.QUOTA, "quota"),
        d.Tick(),
        d.Launched("runpod-1"),
        d.Tick(),
        d.RunStarted("runpod (runpod-1)"),
        d.RunEnded(RunEnd.SUCCEEDED, 0),
        d.RunClosed(RunEnd.SUCCEEDED, 0),
    ]
    seen = [state.state]
    for event in events:
        state, _ = d.decide(state, event)
        if state.state != seen[-1]:
            seen.append(state.state)
    assert seen == [st.PENDING, st.PROVISIONING, st.RUNNING, st.SUCCEEDED]
    assert [(a.offer.provider, a.offer.region, a.outcome) for a in state.attempts] == [
        ("lambda", "us-east-1", Outcome.LAUNCH_FAILED),
        ("lambda", "us-west-1", Outcome.LAUNCH_FAILED),
        ("runpod", "", Outcome.SUCCEEDED),
    ]


def test_every_decided_transition_is_allowed_by_the_state_table() -> None:
    for name, before, event, *_ in ROWS:
        _, actions = d.decide(before, event)
        for action in actions:
            if isinstance(action, d.Transition):
                st.check_transition(before.state, action.to)  # raises IllegalTransition


def test_state_machine() -> None:
    st.check_transition(st.PENDING, st.PROVISIONING)
    st.check_transition(st.RUNNING, st.RECOVERING)
    for terminal in st.TERMINAL:
        for to in range(1, 9):
            with pytest.raises(st.IllegalTransition):
                st.check_transition(terminal, to)
    with pytest.raises(st.IllegalTransition):
        st.check_transition(st.PENDING, st.RUNNING)
    with pytest.raises(st.IllegalTransition):
        d.apply(job(st.PENDING), d.Transition(st.RUNNING, "x"))  # apply() checks each transition too
    assert st.name(st.RUNNING) == "RUNNING" and st.name(42) == "42"


def test_domain_numbers_are_the_apis() -> None:
    """The edge converts states and outcomes by number: they must stay the API's."""
    for state in st.State:
        assert job_pb2.JobState.Name(state) == f"JOB_STATE_{state.name}"
    for outcome in Outcome:
        assert job_pb2.AttemptOutcome.Name(outcome) == f"ATTEMPT_OUTCOME_{outcome.name}"


def test_the_domain_imports_no_protobuf_and_does_no_io() -> None:
    """domain/ imports only pure parts of the standard library (no os, io, asyncio, grpc or protobuf) and itself."""
    allowed = {"__future__", "collections", "collections.abc", "dataclasses", "enum", "json", "math", "re", "typing"}
    folder = Path(d.__file__).parent
    for path in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert name in allowed or name.startswith("crucible.scheduler.domain"), f"{path.name} imports {name}"
