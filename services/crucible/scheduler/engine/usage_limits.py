"""Usage and limits of a running job: runtime over attempts, usage recorded with the cost service per interval, and
the limits that stop a job (max duration, max_cost_usd, an exhausted hard budget).

A limit reached is reported to the driver, which hands it to `domain/decide.py` (LimitReached: stop the run, fail the job).
"""

from __future__ import annotations

from crucible.scheduler.engine.context import SchedulerContext
from crucible.scheduler.engine.jobspec import max_duration_seconds
from crucible.scheduler.engine.live import LiveJob
from crucible.scheduler.engine.offers import OfferSource
from crucible.scheduler.persistence.records import JobRecord
from crucible.scheduler.providers.base import RunStatus


class UsageAndLimits:
    """Records usage of the current attempt and applies the job's limits."""

    def __init__(self, ctx: SchedulerContext, pricing: OfferSource) -> None:
        self.settings = ctx.settings
        self.pricing = pricing
        self.clock = ctx.clock

    def max_duration_s(self, rec: JobRecord) -> float:
        """The job's running-time limit: its max_duration, else the scheduler's default."""
        return max_duration_seconds(rec.job.spec, self.settings.default_max_duration_s)

    def running_seconds(self, rec: JobRecord) -> float:
        """Running time over every attempt (provisioning excluded); an attempt still running counts until now."""
        now = self.clock()
        return sum(max(0.0, (now if p.end is None else p.end) - p.start) for p in rec.job.run_periods())

    def remaining_seconds(self, rec: JobRecord) -> float:
        """Running time the job has left under its limit (negative once past it)."""
        return self.max_duration_s(rec) - self.running_seconds(rec)

    def end_of_run(self, rec: JobRecord, attempt: int, status: RunStatus) -> float:
        """When the run ended: the provider's record (the local wrapper writes it) when it has one, else now.
        A job that ended while the scheduler was down is billed until its real end, not until the restart."""
        now = self.clock()
        if status.end_time is None:
            return now
        return max(rec.job.attempt_began(attempt), min(float(status.end_time), now))

    async def record_usage(self, live: LiveJob, final: bool) -> str:
        """RecordUsage of the current attempt since the last record (every usage_interval_s, and once at its end);
        the answer updates the job's spend. Returns the limit it reached (max_cost_usd, an exhausted hard budget) or ""."""
        rec, book = live.rec, live.book
        if not self.pricing.known or not rec.job.attempts:
            return ""
        periods = rec.job.run_periods()
        period = periods[-1] if periods else None
        if period is None or period.attempt != len(rec.job.attempts) or not period.priced:
            return ""
        start = book.usage_until.get(period.attempt, period.start)
        end = period.end if period.end is not None else self.clock()
        if end <= start or (not final and end - start < self.settings.usage_interval_s):
            return ""
        result = await self.pricing.record(rec.job.job_id, period.offer_id, rec.job.spec.budget_scope, start, end)
        if result is None:
            return ""
        book.usage_until[period.attempt] = end
        rec.job.set_spent(result.job_spent_usd, self.clock())
        if result.hard_budget_exhausted:
            return result.hard_budget_exhausted
        limit = rec.job.spec.max_cost_usd
        if limit is not None and result.job_spent_usd >= limit:
            return f"max_cost_usd ${limit:.2f} reached (spent ${result.job_spent_usd:.4f})"
        return ""

    async def check_limits(self, live: LiveJob) -> str:
        """Record usage (per interval) and check the running time; returns the limit reached, or ""."""
        reason = await self.record_usage(live, final=False)
        if not reason and self.running_seconds(live.rec) > self.max_duration_s(live.rec) + 5:
            reason = f"maximum duration {self.max_duration_s(live.rec):.0f}s reached"
        return reason
