"""The job engine's recovery policy against scripted fakes of external providers and a fixed list of offers.

Failover on capacity/quota errors with blocking, preemption recovery with resume, the restart limit for user-code
failures, cancellation, and a hard budget stopping a running job. The real cost service is used in tests/scheduler/service.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from crucible.api.scheduler.v1 import job_pb2
from crucible.runtime.errors import FailedPrecondition
from crucible.scheduler import convert
from crucible.scheduler.domain import states as st
from crucible.scheduler.domain.job import Offer
from crucible.scheduler.domain.record import Job
from crucible.scheduler.domain.spec import JobSpec
from crucible.scheduler.engine.coordinator import Engine, EngineSettings
from crucible.scheduler.engine.offers import Candidate, UsageResult, rank_offers
from crucible.scheduler.persistence.jobdb import AsyncJobStore, JobStore
from crucible.scheduler.providers.base import (
    LaunchSpec,
    Provider,
    ProviderError,
    ProviderErrorKind,
    RunHandle,
    RunState,
    RunStatus,
)
from crucible.scheduler.providers.registry import ProviderRegistry

A = job_pb2.AttemptOutcome


class ScriptedProvider(Provider):
    """A fake external provider: each submit takes the next script entry, either an error kind or a status sequence."""

    def __init__(self, name: str, script: list) -> None:
        self.name = name
        self.script = list(script)
        self.launches: list[LaunchSpec] = []
        self.cancelled: list[str] = []
        self._runs: dict[str, list[RunStatus]] = {}

    def credentials_present(self) -> bool:
        return True

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        step = self.script.pop(0)
        if isinstance(step, ProviderErrorKind):
            raise ProviderError(self.name, step, f"scripted {step.value} in {spec.offer.region}")
        self.launches.append(spec)
        ref = f"{self.name}-{len(self.launches)}"
        self._runs[ref] = list(step)
        return RunHandle(self.name, ref, {})

    async def status(self, handle: RunHandle) -> RunStatus:
        if handle.ref in self.cancelled:
            return RunStatus(RunState.CANCELLED)
        seq = self._runs[handle.ref]
        return seq.pop(0) if len(seq) > 1 else seq[0]

    async def cancel(self, handle: RunHandle) -> None:
        self.cancelled.append(handle.ref)


RUNNING = RunStatus(RunState.RUNNING)
OK = RunStatus(RunState.SUCCEEDED, 0)


class FixedOffers:
    """Offers from a fixed list, admission always granted, usage summed per job (stands in for catalog data only)."""

    known = True

    def __init__(self, offers: list[Offer], hard_limit_usd: float | None = None) -> None:
        self.offers = offers
        self.hard_limit_usd = hard_limit_usd
        self.spent: dict[str, float] = {}

    async def candidates(self, spec, usable, default_max_s):
        return rank_offers([Candidate(o, o.price_usd_per_hour) for o in self.offers if o.provider in usable], spec)

    async def estimate(self, candidate, seconds):
        return candidate.estimated_usd, ["fixed"]

    async def admit(self, scope, estimated, job_id):
        return None

    async def record(self, job_id, offer_id, scope, start_s, end_s):
        price = next(o.price_usd_per_hour for o in self.offers if o.offer_id == offer_id)
        self.spent[job_id] = self.spent.get(job_id, 0.0) + price * (end_s - start_s) / 3600
        exhausted = ""
        if self.hard_limit_usd is not None and self.spent[job_id] >= self.hard_limit_usd:
            exhausted = f"hard budget b1 limit ${self.hard_limit_usd:.2f} reached"
        return UsageResult(self.spent[job_id], exhausted)

    async def close(self):
        return None


def offer(provider: str, region: str, price: float, spot: bool = False) -> Offer:
    kind = "spot" if spot else "on-demand"
    return Offer(
        offer_id=f"{provider}/gpu_1x_a10/{region}/{kind}",
        provider=provider,
        instance_type="gpu_1x_a10",
        region=region,
        gpu_name="A10",
        gpu_count=1,
        price_usd_per_hour=price,
        spot=spot,
        price_source="test catalog",
    )


async def make_engine(tmp_path: Path, providers: list[ScriptedProvider], offers: FixedOffers) -> Engine:
    store = AsyncJobStore(JobStore(tmp_path / "jobs.db", synchronous="NORMAL"))
    registry = ProviderRegistry((), instances={p.name: p for p in providers})
    engine = Engine(EngineSettings(tmp_path, poll_interval_s=0.02, usage_interval_s=0.05), store, registry, offers)
    await engine.start()
    return engine


async def finish(engine: Engine, job_id: str, timeout: float = 10.0) -> Job:
    async def last() -> Job:
        job = None
        async for job in engine.watch(job_id):
            pass
        return job

    return await asyncio.wait_for(last(), timeout)


def spec(**kw) -> JobSpec:
    """The spec as the servicer hands it to the engine: the request's message read at the edge."""
    base = dict(
        command=["python", "train.py"],
        provider_policy=job_pb2.PROVIDER_POLICY_CHEAPEST,
        resources={"gpu_count": 1, "gpu_names": ["A10"]},
    )
    base.update(kw)
    return convert.spec(job_pb2.JobSpec(**base))


async def test_failover_blocks_failed_locations_and_providers(tmp_path: Path) -> None:
    lam = ScriptedProvider("lambda", [ProviderErrorKind.CAPACITY, ProviderErrorKind.QUOTA])
    rp = ScriptedProvider("runpod", [[RUNNING, OK]])
    offers = FixedOffers(
        [
            offer("lambda", "us-east-1", 1.0),
            offer("lambda", "us-west-1", 1.2),
            offer("lambda", "eu-1", 1.3),
            offer("runpod", "", 2.0),
        ]
    )
    engine = await make_engine(tmp_path, [lam, rp], offers)
    job = await engine.create(spec(), "", False)
    assert job.provider == "lambda" and job.cost.estimated_usd == 1.0
    done = await finish(engine, job.job_id)
    assert done.state == st.SUCCEEDED
    outcomes = [(a.provider, a.offer.region, a.outcome) for a in done.attempts]
    # capacity blocks only us-east-1; quota blocks lambda everywhere, so eu-1 is never tried
    assert outcomes == [
        ("lambda", "us-east-1", A.ATTEMPT_OUTCOME_LAUNCH_FAILED),
        ("lambda", "us-west-1", A.ATTEMPT_OUTCOME_LAUNCH_FAILED),
        ("runpod", "", A.ATTEMPT_OUTCOME_SUCCEEDED),
    ]
    assert "capacity" in done.attempts[0].reason
    assert [t.to_state for t in done.transitions] == [st.PENDING, st.PROVISIONING, st.RUNNING, st.SUCCEEDED]
    await engine.stop()


async def test_preemption_recovers_and_resumes(tmp_path: Path) -> None:
    rp = ScriptedProvider("runpod", [[RUNNING, RUNNING, RunStatus(RunState.PREEMPTED, message="spot reclaimed")], [RUNNING, OK]])
    engine = await make_engine(tmp_path, [rp], FixedOffers([offer("runpod", "", 0.5, spot=True)]))
    done = await finish(engine, (await engine.create(spec(spot_allowed=True), "", False)).job_id)
    assert done.state == st.SUCCEEDED
    assert [a.outcome for a in done.attempts] == [A.ATTEMPT_OUTCOME_PREEMPTED, A.ATTEMPT_OUTCOME_SUCCEEDED]
    assert st.RECOVERING in [t.to_state for t in done.transitions]
    assert [s.resume for s in rp.launches] == [False, True]
    assert rp.launches[1].env["CRUCIBLE_RESUME"] == "1" and rp.launches[1].env["CRUCIBLE_ATTEMPT"] == "2"
    await engine.stop()


async def test_machines_are_released_after_every_attempt_ends(tmp_path: Path) -> None:
    """VM providers bill a machine whose command exited until it is terminated: each ended attempt is released."""
    rp = ScriptedProvider("runpod", [[RUNNING, RunStatus(RunState.FAILED, 1, "exit status 1")], [RUNNING, OK]])
    engine = await make_engine(tmp_path, [rp], FixedOffers([offer("runpod", "", 0.5)]))
    job = await engine.create(spec(restart_policy={"max_restarts_on_errors": 1}), "", False)
    done = await finish(engine, job.job_id)
    assert done.state == st.SUCCEEDED
    assert rp.cancelled == ["runpod-1", "runpod-2"]
    await engine.stop()


async def test_user_failures_restart_only_up_to_the_limit(tmp_path: Path) -> None:
    fail = [RUNNING, RunStatus(RunState.FAILED, 3, "exit status 3")]
    rp = ScriptedProvider("runpod", [fail, fail, fail])
    engine = await make_engine(tmp_path, [rp], FixedOffers([offer("runpod", "", 0.5)]))
    job = await engine.create(spec(restart_policy={"max_restarts_on_errors": 1}), "", False)
    done = await finish(engine, job.job_id)
    assert done.state == st.FAILED
    assert [(a.outcome, a.exit_code) for a in done.attempts] == [(A.ATTEMPT_OUTCOME_USER_ERROR, 3)] * 2
    reasons = [t.reason for t in done.transitions]
    assert any("restart 1 of 1" in r for r in reasons) and "restart limit 1 reached" in reasons[-1]
    assert len(rp.launches) == 2
    await engine.stop()


async def test_no_launchable_offer_fails_the_job(tmp_path: Path) -> None:
    lam = ScriptedProvider("lambda", [ProviderErrorKind.AUTH])
    engine = await make_engine(tmp_path, [lam], FixedOffers([offer("lambda", "a", 1.0), offer("lambda", "b", 1.0)]))
    done = await finish(engine, (await engine.create(spec(), "", False)).job_id)
    assert done.state == st.FAILED and "no offer could be launched" in done.transitions[-1].reason
    assert len(done.attempts) == 1  # auth blocks the whole provider
    await engine.stop()


async def test_cancel_running_job_then_terminal_is_refused(tmp_path: Path) -> None:
    rp = ScriptedProvider("runpod", [[RUNNING]])
    engine = await make_engine(tmp_path, [rp], FixedOffers([offer("runpod", "", 0.5)]))
    job = await engine.create(spec(), "", False)
    async for snap in engine.watch(job.job_id):
        if snap.state == st.RUNNING:
            break
    cancelling = await engine.cancel(job.job_id, "enough")
    assert cancelling.state == st.CANCELLING
    done = await finish(engine, job.job_id)
    assert done.state == st.CANCELLED and done.transitions[-1].reason == "cancelled: enough"
    assert rp.cancelled == ["runpod-1"] and done.attempts[-1].outcome == A.ATTEMPT_OUTCOME_STOPPED
    with pytest.raises(FailedPrecondition):
        await engine.cancel(job.job_id, "")
    await engine.stop()


async def test_hard_budget_stops_a_running_job(tmp_path: Path) -> None:
    rp = ScriptedProvider("runpod", [[RUNNING]])
    offers = FixedOffers([offer("runpod", "", 3600.0)], hard_limit_usd=0.1)  # $1 per second: exhausted at once
    engine = await make_engine(tmp_path, [rp], offers)
    done = await finish(engine, (await engine.create(spec(), "", False)).job_id)
    assert done.state == st.FAILED and "hard budget b1" in done.transitions[-1].reason
    assert rp.cancelled and done.attempts[-1].outcome == A.ATTEMPT_OUTCOME_STOPPED
    assert done.cost.spent_usd >= 0.1
    await engine.stop()
