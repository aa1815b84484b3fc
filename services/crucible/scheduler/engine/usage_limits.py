"""Usage and limits of a running job: runtime over attempts, usage recorded with the cost service per interval, and
the limits that stop a job (max duration, max_cost_usd, an exhausted hard budget).

A limit reached is reported to the driver, which hands it to `domain/decide.py` (LimitReached: stop the run, fail the job).
"""

from __future__ import annotations

from crucible.api.cost.v1 import offer_pb2
from crucible.api.scheduler.v1 import job_pb2
from crucible.runtime.convert import timestamp_from_unix, unix_seconds
from crucible.scheduler.engine.context import SchedulerContext
from crucible.scheduler.engine.jobspec import max_duration_seconds
from crucible.scheduler.engine.live import LiveJob
from crucible.scheduler.engine.pricing import OfferSource
from crucible.scheduler.persistence.records import JobRecord
from crucible.scheduler.providers.base import RunStatus


def priced(offer: offer_pb2.Offer) -> bool:
    """Whether the offer comes from the cost catalog (usage can be recorded against it)."""
    return not offer.price_source.startswith("unknown")


class UsageAndLimits:
    """Records usage of the current attempt and applies the job's limits."""

    def __init__(self, ctx: SchedulerContext, pricing: OfferSource) -> None:
        self.settings = ctx.settings
        self.pricing = pricing
        self.clock = ctx.clock

    def max_duration_s(self, spec: job_pb2.JobSpec) -> float:
        """The job's running-time limit: its max_duration, else the scheduler's default."""
        return max_duration_seconds(spec, self.settings.default_max_duration_s)

    def running_seconds(self, rec: JobRecord) -> float:
        """Running time over every attempt (provisioning excluded); an attempt still running counts until now."""
        total, now = 0.0, self.clock()
        for attempt in rec.job.attempts:
            if attempt.HasField("start_time"):
                end = unix_seconds(attempt.end_time) if attempt.HasField("end_time") else now
                total += max(0.0, end - unix_seconds(attempt.start_time))
        return total

    def remaining_seconds(self, rec: JobRecord) -> float:
        """Running time the job has left under its limit (negative once past it)."""
        return self.max_duration_s(rec.job.spec) - self.running_seconds(rec)

    def end_of_run(self, attempt: job_pb2.JobAttempt, status: RunStatus) -> float:
        """When the run ended: the provider's record (the local wrapper writes it) when it has one, else now.
        A job that ended while the scheduler was down is billed until its real end, not until the restart."""
        now = self.clock()
        if status.end_time is None:
            return now
        earliest = unix_seconds(attempt.start_time if attempt.HasField("start_time") else attempt.create_time)
        return max(earliest, min(float(status.end_time), now))

    async def record_usage(self, live: LiveJob, final: bool) -> str:
        """RecordUsage of the current attempt since the last record (every usage_interval_s, and once at its end);
        the answer updates the job's spend. Returns the limit it reached (max_cost_usd, an exhausted hard budget) or ""."""
        rec, book = live.rec, live.book
        if not self.pricing.known or not rec.job.attempts:
            return ""
        attempt = rec.job.attempts[-1]
        if not attempt.HasField("start_time") or not priced(attempt.offer):
            return ""
        start = book.usage_until.get(attempt.attempt, unix_seconds(attempt.start_time))
        end = unix_seconds(attempt.end_time) if attempt.HasField("end_time") else self.clock()
        if end <= start or (not final and end - start < self.settings.usage_interval_s):
            return ""
        result = await self.pricing.record(rec.job.job_id, attempt.offer.offer_id, rec.job.spec.budget_scope, start, end)
        if result is None:
            return ""
        book.usage_until[attempt.attempt] = end
        rec.job.cost.spent_usd = result.job_spent_usd
        rec.job.cost.update_time.CopyFrom(timestamp_from_unix(self.clock()))
        spec = rec.job.spec
        if result.hard_budget_exhausted:
            return result.hard_budget_exhausted
        if spec.HasField("max_cost_usd") and result.job_spent_usd >= spec.max_cost_usd:
            return f"max_cost_usd ${spec.max_cost_usd:.2f} reached (spent ${result.job_spent_usd:.4f})"
        return ""

    async def check_limits(self, live: LiveJob) -> str:
        """Record usage (per interval) and check the running time; returns the limit reached, or ""."""
        reason = await self.record_usage(live, final=False)
        if not reason and self.running_seconds(live.rec) > self.max_duration_s(live.job.spec) + 5:
            reason = f"maximum duration {self.max_duration_s(live.job.spec):.0f}s reached"
        return reason
