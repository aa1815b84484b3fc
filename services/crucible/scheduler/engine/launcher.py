"""Launching attempts: the I/O behind decide's PrepareFiles, Submit and FindLostRun (which offer, what a failure
blocks and what comes next are decided in `domain/decide.py`). Transient errors are retried on the same offer here.

Also what an attempt needs before it starts: inputs staged to the store, a fresh working folder on a relaunch,
presigned URLs for rented machines, and the `LaunchSpec` handed to the provider.
"""

from __future__ import annotations

import asyncio
import logging

from crucible.runtime.errors import CrucibleError
from crucible.scheduler.domain import decide as rules
from crucible.scheduler.domain.job import LaunchError, Offer
from crucible.scheduler.engine.context import SchedulerContext
from crucible.scheduler.engine.live import LiveJob
from crucible.scheduler.engine.offers import Candidate
from crucible.scheduler.engine.usage_limits import UsageAndLimits
from crucible.scheduler.objects import inputs as job_inputs
from crucible.scheduler.objects import transfer
from crucible.scheduler.objects.objectstore import StoreError
from crucible.scheduler.persistence.records import JobRecord
from crucible.scheduler.providers.base import (
    LaunchSpec,
    OfferRef,
    Provider,
    ProviderError,
    ProviderErrorKind,
    RunHandle,
)

log = logging.getLogger(__name__)


def offer_ref(value: Offer) -> OfferRef:
    """The provider-interface view of an offer."""
    return OfferRef(
        value.provider,
        value.instance_type,
        value.region,
        value.gpu_name,
        value.gpu_count,
        value.spot,
        value.price_usd_per_hour,
        value.offer_id,
    )


#: Remote providers whose boot script or init step downloads LaunchSpec.input_urls (see providers/remote.py).
FETCHES_INPUTS = frozenset({"lambda", "paperspace", "runpod", "kubernetes"})
#: Most input objects a rented machine fetches by URL.
MAX_REMOTE_INPUT_OBJECTS = 1000
#: Error kinds retried `transient_retries` times on the same offer before failing over.
RETRIED_KINDS = (ProviderErrorKind.TRANSIENT, ProviderErrorKind.MALFORMED_RESPONSE)

#: (code URL, ((input path, URL), ...)) a rented machine downloads.
RemoteUrls = tuple[str, tuple[tuple[str, str], ...]]


class JobLauncher:
    """Launches a job's next attempt, failing over between its offers, or re-finds one launched before a crash."""

    def __init__(self, ctx: SchedulerContext, limits: UsageAndLimits) -> None:
        self.settings = ctx.settings
        self.registry = ctx.registry
        self.objects = ctx.objects
        self.folders = ctx.folders
        self.limits = limits
        self.clock = ctx.clock

    # --- re-finding a run launched before a crash ---------------------------------------------------------------

    async def find_run(self, rec: JobRecord) -> RunHandle | None:
        """The provider's run of the attempt in progress whose handle was never recorded (the scheduler stopped
        between submitting it and saving the handle), or None when the provider has no such run."""
        attempt_number, attempt = len(rec.job.attempts), rec.job.attempts[-1]
        provider = self.registry.load(attempt.provider)
        if provider is None:
            return None
        spec = self.launch_spec(rec, attempt_number, Candidate(attempt.offer or Offer("", ""), None), resume=attempt_number > 1)
        try:
            return await provider.find(spec)
        except ProviderError as exc:
            log.warning("looking up attempt %d of %s failed: %s", attempt_number, rec.job.job_id, exc)
            return None

    async def find_lost_run(self, live: LiveJob) -> rules.Event:
        """decide.FindLostRun: LostRunFound (the handle kept on the live job until recorded) or LostRunMissing."""
        found = await self.find_run(live.rec)
        if found is None:
            return rules.LostRunMissing()
        live.new_handle = found
        return rules.LostRunFound(found.ref)

    # --- what an attempt is launched with ------------------------------------------------------------------------

    def launch_spec(
        self,
        rec: JobRecord,
        attempt: int,
        candidate: Candidate,
        resume: bool,
        store_env: dict[str, str] | None = None,
        code_url: str = "",
        input_urls: tuple[tuple[str, str], ...] = (),
    ) -> LaunchSpec:
        """What the provider is given for one attempt (also what `find()` matches a lost launch against)."""
        job = rec.job
        spec = job.spec
        checkpoint_dir = spec.checkpoint_dir or "checkpoints"
        env = dict(spec.env)
        env.update(store_env or {})  # CRUCIBLE_CHECKPOINT_URL, ARTIFACT_URL, scoped keys: never logged
        env.update({"CRUCIBLE_JOB_ID": job.job_id, "CRUCIBLE_ATTEMPT": str(attempt), "CRUCIBLE_CHECKPOINT_DIR": checkpoint_dir})
        if resume:
            env["CRUCIBLE_RESUME"] = "1"
        return LaunchSpec(
            job_id=job.job_id,
            attempt=attempt,
            command=tuple(spec.command),
            env=env,
            offer=offer_ref(candidate.offer),
            work_dir=self.folders.job_dir(job.job_id),
            # Only a job that brings code has code to ship; remote adapters refuse a code_dir they cannot upload.
            code_dir=self.folders.work(job.job_id) if spec.code else None,
            container_image=spec.container_image or self.settings.container_image,
            checkpoint_dir=checkpoint_dir,
            max_duration_s=max(1.0, self.limits.remaining_seconds(rec)),
            resume=resume,
            log_cap_bytes=self.settings.log_cap_bytes,
            code_url=code_url,
            code_sha256=rec.bookkeeping.code_sha256 if code_url else "",
            input_urls=input_urls,
        )

    def _prepare_attempt(self, rec: JobRecord, relaunch: bool) -> None:
        """Before an attempt (in a thread): inputs staged to the store once; a relaunch gets a fresh working folder
        with only the code (the last attempt's outputs went to the store when it ended; checkpoints come back through
        CRUCIBLE_CHECKPOINT_URL), as it would on a new machine."""
        job_id, spec, book = rec.job.job_id, rec.job.spec, rec.bookkeeping
        if spec.inputs and not book.inputs_staged:
            sources = job_inputs.resolve_inputs(spec.inputs, self.settings.input_limits, self.objects)
            book.inputs_staged = job_inputs.stage_to_store(sources, self.objects, job_id)
            log.info("job %s: %d input bytes staged to the store", job_id, book.inputs_staged)
        legacy = bool(spec.code or rec.job.code_archive_sha256) and not book.code_sha256
        if relaunch and not legacy:  # (a job created before the store kept its code relaunches in place, as it did)
            manifest = transfer.fresh_work(
                self.objects, job_id, self.folders.work(job_id), book.code_sha256, self.settings.code_limits.max_bytes
            )
            self.folders.write_manifest(job_id, manifest)
            book.inputs_local = False

    def _local_inputs(self, rec: JobRecord) -> None:
        """The staged inputs copied from the store into the local working folder (in a thread; once per folder)."""
        job_id = rec.job.job_id
        if rec.job.spec.inputs and not rec.bookkeeping.inputs_local:
            work = self.folders.work(job_id)
            self.objects.download_tree(job_id, "inputs", work, max_bytes=self.settings.input_limits.max_bytes)
            # Inputs, like the code, are not outputs: unchanged, they are neither listed nor uploaded as artifacts.
            manifest = self.folders.manifest(job_id)
            manifest.update({path: value for path, value in transfer.code_manifest(work).items() if path not in manifest})
            self.folders.write_manifest(job_id, manifest)
            rec.bookkeeping.inputs_local = True

    def _remote_urls(self, rec: JobRecord) -> RemoteUrls:
        """(code URL, input URLs) a rented machine can GET: presigned, short-lived; empty on a file:// store."""
        if self.objects.scheme != "s3":
            return "", ()
        job_id, ttl = rec.job.job_id, self.settings.code_url_ttl_s
        code = self.objects.read_url(job_id, "code", transfer.CODE_OBJECT, ttl) if rec.bookkeeping.code_sha256 else ""
        stored = self.objects.list(job_id, "inputs") if rec.job.spec.inputs else []
        if len(stored) > MAX_REMOTE_INPUT_OBJECTS:
            raise StoreError(
                f"{len(stored)} input objects: remote machines fetch at most {MAX_REMOTE_INPUT_OBJECTS} (pack them in one file)"
            )
        return code, tuple((item.path, self.objects.read_url(job_id, "inputs", item.path, ttl)) for item in stored)

    async def _provider_files(self, rec: JobRecord, provider_name: str, provider: Provider | None) -> RemoteUrls:
        """Get the job's files where the provider reads them: local inputs copied (the local provider shows the job
        its own store folders); remote machines get presigned URLs. Raises StoreError/OSError when that cannot be done."""
        if provider_name == "local":
            await asyncio.to_thread(self._local_inputs, rec)
            return "", ()
        if provider_name == "dryrun":
            return "", ()
        code_url, input_urls = await asyncio.to_thread(self._remote_urls, rec)
        if rec.job.spec.inputs and provider_name not in FETCHES_INPUTS:
            raise StoreError(
                f"{provider_name} does not stage inputs; providers that do: {', '.join(sorted(FETCHES_INPUTS))} and local"
            )
        if rec.job.spec.inputs and not input_urls:
            raise StoreError(f"inputs reach {provider_name} only through an s3:// store (set --artifact-store)")
        return code_url, input_urls

    # --- launch and failover -------------------------------------------------------------------------------------

    async def _submit(
        self, provider: Provider, candidate: Candidate, spec: LaunchSpec
    ) -> tuple[RunHandle | None, ProviderError | None]:
        """Submit one attempt, retrying transient errors; (handle, None) or (None, the last error)."""
        error: ProviderError | None = None
        for retry in range(self.settings.transient_retries + 1):
            try:
                return await provider.submit(spec), None
            except ProviderError as exc:
                error = exc
                if exc.kind not in RETRIED_KINDS or retry == self.settings.transient_retries:
                    break
                await asyncio.sleep(min(exc.retry_after_s or 0.5 * 2**retry, 10.0))
            except Exception as exc:  # an adapter bug: treat like a failed launch, keep the job alive
                log.exception("adapter %s failed to submit", candidate.provider)
                error = ProviderError(
                    candidate.provider, ProviderErrorKind.TRANSIENT, f"adapter error: {type(exc).__name__}: {exc}"
                )
                break
        return None, error

    async def prepare(self, live: LiveJob) -> rules.Event:
        """decide.PrepareFiles: the job's files ready for the next launches (FilesReady) or not (FilesFailed)."""
        rec = live.rec
        try:
            await asyncio.to_thread(self._prepare_attempt, rec, bool(rec.job.attempts))
            live.store_env = await asyncio.to_thread(self.objects.job_env, rec.job.job_id, self.limits.remaining_seconds(rec))
        except (StoreError, OSError, ValueError, CrucibleError) as exc:
            return rules.FilesFailed(str(exc))
        return rules.FilesReady()

    async def submit(self, live: LiveJob, action: rules.Submit) -> rules.Event:
        """decide.Submit: launch the attempt on its offer; Launched (the handle kept on the live job until recorded)
        or LaunchFailed with the error kind that decides what is blocked."""
        rec = live.rec
        attempt = rec.job.attempts[action.attempt - 1]
        candidate = Candidate(attempt.offer or Offer("", ""), None)
        provider = self.registry.load(candidate.provider)
        handle: RunHandle | None = None
        error: ProviderError | None = None
        urls: RemoteUrls = ("", ())
        try:
            urls = await self._provider_files(rec, candidate.provider, provider)
        except (StoreError, OSError) as exc:
            provider, error = None, ProviderError(candidate.provider, ProviderErrorKind.INVALID, f"the job's files: {exc}")
        if provider is None:
            error = error or ProviderError(
                candidate.provider, ProviderErrorKind.AUTH, self.registry.error(candidate.provider) or "unavailable"
            )
        else:
            code_url, input_urls = urls
            spec = self.launch_spec(rec, action.attempt, candidate, action.resume, live.store_env, code_url, input_urls)
            handle, error = await self._submit(provider, candidate, spec)
        if handle is not None:
            live.new_handle = handle
            return rules.Launched(handle.ref)
        if error is None:
            raise RuntimeError(f"launch of {rec.job.job_id} ended with neither a handle nor an error")
        log.warning("launch of %s attempt %d failed (%s); failing over", rec.job.job_id, action.attempt, error)
        return rules.LaunchFailed(LaunchError(error.kind.value), str(error))
