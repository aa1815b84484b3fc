"""CreateJob: validate the spec and its code and inputs, choose offers, estimate the cost, ask for admission, prepare
the job's folder (code packed into the store) and store the job durably, idempotently per request id.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import shutil
import sqlite3
import time
import uuid
from pathlib import Path

from crucible.runtime.errors import AlreadyExists, FailedPrecondition, Unavailable
from crucible.scheduler.domain import decide as rules
from crucible.scheduler.domain import states
from crucible.scheduler.domain.job import JobState
from crucible.scheduler.domain.record import Job, JobCost, TransitionRecord, time_ns
from crucible.scheduler.domain.spec import JobSpec, ProviderPolicy
from crucible.scheduler.engine import jobspec
from crucible.scheduler.engine.context import SchedulerContext
from crucible.scheduler.engine.offers import OfferSource
from crucible.scheduler.objects import inputs as job_inputs
from crucible.scheduler.objects import transfer
from crucible.scheduler.objects.objectstore import StoreError
from crucible.scheduler.persistence.records import JobBookkeeping, JobRecord, StoredCandidate


@dataclasses.dataclass(frozen=True)
class Created:
    """What CreateJob answers: the job, and its record when it is new and must be driven (None for a preview or an
    earlier job with the same request id)."""

    job: Job
    new_record: JobRecord | None = None


def check_same_spec(existing: JobRecord, digest: str) -> Job:
    """The earlier job of a reused request id, or ALREADY_EXISTS when it was created with a different spec."""
    if existing.spec_sha256 != digest:
        raise AlreadyExists(
            f"request_id was used for job {existing.job.job_id} with a different spec",
            reason="REQUEST_ID_REUSED",
            metadata={"job_id": existing.job.job_id},
        )
    return existing.job


class JobCreator:
    """Turns a CreateJob request into a stored PENDING job (or a preview with `validate_only`)."""

    def __init__(self, ctx: SchedulerContext, pricing: OfferSource) -> None:
        self.settings = ctx.settings
        self.store = ctx.store
        self.registry = ctx.registry
        self.pricing = pricing
        self.objects = ctx.objects
        self.folders = ctx.folders
        self.clock = ctx.clock
        self._insert_lock = asyncio.Lock()

    def usable_providers(self) -> list[str]:
        """Providers whose adapters loaded and have their credentials."""
        return [status.name for status in self.registry.statuses() if status.usable]

    def _only_credentials_missing(self, name: str) -> bool:
        status = self.registry.status(name)
        return status.enabled and not status.credentials_present and status.unavailable_reason == "credentials missing"

    async def create(self, spec: JobSpec, request_id: str, validate_only: bool) -> Created:
        """CreateJob: validate, pick offers, estimate, admit, store (durably)."""
        jobspec.validate_spec(spec, request_id, self.registry.known())
        digest = jobspec.spec_sha256(spec)
        if request_id and not validate_only:
            existing = await self.store.by_request_id(request_id)
            if existing is not None:
                return Created(check_same_spec(existing, digest))
        job_inputs.validate_inputs(spec.inputs)
        # File system and archive checks (allow-list, sizes, special files) run in a thread, before any provider work;
        # so do the inputs' (allowed roots, links, sizes: listing a store prefix is I/O).
        await asyncio.to_thread(jobspec.check_code, spec, self.settings.code_limits)
        if spec.inputs:
            try:
                await asyncio.to_thread(job_inputs.resolve_inputs, spec.inputs, self.settings.input_limits, self.objects)
            except StoreError as exc:
                raise Unavailable(f"the artifact store cannot be read: {exc}", reason="STORE_UNAVAILABLE") from None
        usable = self.usable_providers()
        if validate_only:
            # A preview (`jobs submit --dry-run`) needs no keys: a provider named in the spec and held back only by its
            # missing credentials is previewed too; creating the job still refuses it.
            usable += [n for n in spec.providers if n not in usable and self._only_credentials_missing(n)]
        wanted = list(spec.providers) or usable
        unusable = [name for name in spec.providers if name not in usable]
        if spec.provider_policy == ProviderPolicy.EXPLICIT and unusable:
            raise FailedPrecondition(
                f"provider {unusable[0]} cannot be used: {self.registry.status(unusable[0]).unavailable_reason}",
                reason="PROVIDER_UNAVAILABLE",
                metadata={"provider": unusable[0]},
            )
        candidates = await self.pricing.candidates(
            spec, [name for name in wanted if name in usable], self.settings.default_max_duration_s
        )
        if not candidates:
            why = f"; unusable providers: {', '.join(unusable)}" if unusable else ""
            if not self.pricing.known:
                why += "; no cost service is configured, so only local and dryrun can run"
            raise FailedPrecondition(f"no offer meets the spec{why}", reason="NO_FEASIBLE_OFFER")
        first = candidates[0]
        expected_s = jobspec.expected_seconds(spec)
        estimated, assumptions = await self.pricing.estimate(first, expected_s)
        scope = spec.budget_scope or self.settings.default_budget_scope
        await self.pricing.admit(scope, estimated, "")
        now_s = self.clock()
        now = time_ns(now_s)
        job = Job(
            # stored without the code archive (in the object store now), with the scope it is billed to
            spec=dataclasses.replace(spec, code_archive=None, budget_scope=scope, wire_sha256="", wire_bytes=0),
            state=states.PENDING,
            provider=first.provider,
            offer=first.offer,
            create_time=now,
            update_time=now,
        )
        if spec.code_archive is not None:
            job.code_archive_sha256 = hashlib.sha256(spec.code_archive).hexdigest()
        cost_note = (
            "estimated cost unknown: " + first.offer.price_source
            if estimated is None
            else (f"estimated ${estimated:.4f} on {first.offer.offer_id} for {expected_s / 3600:.2f} h")
        )
        job.cost = JobCost(estimated_usd=estimated or 0.0, update_time=now)
        _, (created,) = rules.decide(JobState(states.UNSPECIFIED), rules.Admitted(cost_note))
        if not isinstance(created, rules.Transition):
            raise TypeError(f"a new job's first action must be a transition, not {created!r}")
        job.transitions.append(TransitionRecord(states.UNSPECIFIED, created.to, now, created.reason, 0))
        if validate_only:
            return Created(job)
        job.job_id = f"job-{time.strftime('%Y%m%d', time.gmtime(now_s))}-{uuid.uuid4().hex[:12]}"
        book = JobBookkeeping(
            candidates=[StoredCandidate(c.offer, c.estimated_usd) for c in candidates], assumptions=list(assumptions)
        )
        folder = self.folders.job_dir(job.job_id)
        try:
            code = await asyncio.to_thread(self._prepare_folder, folder, spec, job.job_id)
        except StoreError as exc:
            raise Unavailable(f"the job's code could not be stored: {exc}", reason="STORE_UNAVAILABLE") from None
        if code is not None:
            book.code_sha256, book.code_bytes = code
        rec = JobRecord(job, digest, request_id, book)
        async with self._insert_lock:
            try:
                await self.store.insert(rec)
            except sqlite3.IntegrityError:
                shutil.rmtree(folder, ignore_errors=True)
                existing = await self.store.by_request_id(request_id) if request_id else None
                if existing is None:
                    raise
                return Created(check_same_spec(existing, digest))
        return Created(job, rec)

    def _prepare_folder(self, folder: Path, spec: JobSpec, job_id: str) -> tuple[str, int] | None:
        """The job's folder with its code (in a thread); a refused code folder leaves nothing behind. A job with code
        also gets it packed into the store (code/code.tar.gz): fresh working folders and remote machines start from it.
        Returns (sha256, size) of that archive, or None without code."""
        try:
            manifest = jobspec.unpack_code(spec, folder / "work", self.settings.code_limits)
            code = transfer.publish_code(self.objects, job_id, folder / "work", manifest) if spec.code else None
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        (folder / "code_manifest.json").write_text(json.dumps(manifest))
        return code
