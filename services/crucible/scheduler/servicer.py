"""gRPC servicer of the scheduler service: protobuf <-> domain translation only.

Jobs go to the Engine; sizing and placement to the pure functions in crucible.scheduler.sizing.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import grpc

from crucible.api.scheduler.v1 import job_pb2, scheduler_service_pb2_grpc
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.runtime.convert import timestamp_from_unix
from crucible.runtime.errors import InvalidArgument, OutOfRange
from crucible.scheduler import convert, sizing
from crucible.scheduler.engine import jobspec
from crucible.scheduler.engine.coordinator import Engine
from crucible.scheduler.objects import workdir
from crucible.scheduler.persistence.jobdb import (
    decode_page_token,
    decode_progress_token,
    encode_page_token,
    encode_progress_token,
)

SERVICE_DESCRIPTOR = pb.DESCRIPTOR.services_by_name["SchedulerService"]

PRECISIONS = {
    pb.PRECISION_FP32: "fp32",
    pb.PRECISION_FP16: "fp16",
    pb.PRECISION_BF16: "bf16",
    pb.PRECISION_MIXED_FP16: "mixed_fp16",
    pb.PRECISION_MIXED_BF16: "mixed_bf16",
    pb.PRECISION_INT8: "int8",
    pb.PRECISION_INT4: "int4",
}
OPTIMIZERS = {
    pb.OPTIMIZER_ADAMW: "adamw",
    pb.OPTIMIZER_SGD: "sgd",
    pb.OPTIMIZER_SGD_MOMENTUM: "sgd_momentum",
    pb.OPTIMIZER_ADAMW_8BIT: "adamw_8bit",
}
STRATEGIES = {
    "single_device": pb.PLACEMENT_STRATEGY_SINGLE_DEVICE,
    "data_parallel": pb.PLACEMENT_STRATEGY_DATA_PARALLEL,
    "sharded": pb.PLACEMENT_STRATEGY_SHARDED,
}
STREAM_NAMES = {pb.LOG_STREAM_STDOUT: "stdout", pb.LOG_STREAM_STDERR: "stderr"}
STREAM_ENUMS = {v: k for k, v in STREAM_NAMES.items()}
#: Values one ListJobs filter (states, providers) may list.
MAX_FILTER_VALUES = 32


def _page_size(value: int, default: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument.field(field, "must not be negative")
    return min(value or default, 1000)


def _shape(t: pb.TransformerConfig) -> sizing.Shape:
    return sizing.Shape(t.n_layer, t.n_head, t.n_embd, t.block_size, t.vocab_size)


_U64_MAX = 2**64 - 1


def _u64(value: int, what: str) -> int:
    """A computed byte count for a uint64 field; OUT_OF_RANGE when the inputs describe more than 2^64 bytes."""
    if not 0 <= value <= _U64_MAX:
        raise OutOfRange(
            f"{what} comes to {value} bytes, beyond 2^64: the request's sizes (batch, sequence length, "
            "parallel requests, activation bytes) are far past any real machine",
            reason="SIZE_OVERFLOW",
        )
    return int(value)


class SchedulerServicer(scheduler_service_pb2_grpc.SchedulerServiceServicer):
    """Translates SchedulerService calls to the engine and the sizing functions."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def engine(self) -> Engine:
        """The engine every call goes to (read-only, so the server's lazy servicer can look it up at each call)."""
        return self._engine

    async def CreateJob(self, request: pb.CreateJobRequest, context: grpc.aio.ServicerContext) -> pb.CreateJobResponse:
        if not request.HasField("spec"):
            raise InvalidArgument.field("spec", "is required")
        # Fields this server does not know are never stored (they would make the record as large as the client likes).
        request.spec.DiscardUnknownFields()
        job = await self.engine.create(convert.spec(request.spec), request.request_id, request.validate_only)
        return pb.CreateJobResponse(job=convert.job_message(job))

    async def GetJob(self, request: pb.GetJobRequest, context: grpc.aio.ServicerContext) -> pb.GetJobResponse:
        return pb.GetJobResponse(job=convert.job_message(await self.engine.get(request.job_id)))

    async def ListJobs(self, request: pb.ListJobsRequest, context: grpc.aio.ServicerContext) -> pb.ListJobsResponse:
        for i, s in enumerate(request.states):
            if s == job_pb2.JOB_STATE_UNSPECIFIED or s not in job_pb2.JobState.values():
                raise InvalidArgument.field(f"states[{i}]", "must be a JobState other than UNSPECIFIED")
        size = _page_size(request.page_size, 50, "page_size")
        if len(request.states) > MAX_FILTER_VALUES or len(request.providers) > MAX_FILTER_VALUES:
            raise InvalidArgument.field(
                "states" if len(request.states) > MAX_FILTER_VALUES else "providers", f"at most {MAX_FILTER_VALUES} values"
            )
        for i, name in enumerate(request.providers):
            if len(name) > jobspec.MAX_NAME_CHARS:
                raise InvalidArgument.field(f"providers[{i}]", f"at most {jobspec.MAX_NAME_CHARS} characters")
        if len(request.budget_scope) > jobspec.MAX_NAME_CHARS:
            raise InvalidArgument.field("budget_scope", f"at most {jobspec.MAX_NAME_CHARS} characters")
        before = None
        if request.page_token:
            before = decode_page_token(request.page_token)
            if before is None:
                raise InvalidArgument.field("page_token", "is not a token returned by ListJobs")
        jobs = await self.engine.list(
            states=list(request.states),
            providers=list(request.providers),
            budget_scope=request.budget_scope,
            limit=size + 1,
            before_seq=before,
            max_bytes=jobspec.MAX_LIST_PAGE_BYTES,
        )
        # Bounded in bytes too: the page stops before it would pass MAX_LIST_PAGE_BYTES (it always holds one job).
        page: list[tuple[int, job_pb2.Job]] = []
        total = 0
        for seq, record in jobs[:size]:
            job = convert.job_message(record)
            total += job.ByteSize() + 8  # the field's tag and length
            if page and total > jobspec.MAX_LIST_PAGE_BYTES:
                break
            page.append((seq, job))
        token = encode_page_token(page[-1][0]) if len(jobs) > len(page) else ""
        return pb.ListJobsResponse(jobs=[job for _seq, job in page], next_page_token=token)

    async def CancelJob(self, request: pb.CancelJobRequest, context: grpc.aio.ServicerContext) -> pb.CancelJobResponse:
        if len(request.reason) > 500:
            raise InvalidArgument.field("reason", "at most 500 characters")
        return pb.CancelJobResponse(job=convert.job_message(await self.engine.cancel(request.job_id, request.reason)))

    async def WatchJob(
        self, request: pb.WatchJobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchJobResponse]:
        async for job in self.engine.watch(request.job_id):
            yield pb.WatchJobResponse(job=convert.job_message(job))

    async def StreamJobLogs(
        self, request: pb.StreamJobLogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamJobLogsResponse]:
        streams = []
        for i, s in enumerate(request.streams):
            if s not in STREAM_NAMES:
                raise InvalidArgument.field(f"streams[{i}]", "must be LOG_STREAM_STDOUT or LOG_STREAM_STDERR")
            streams.append(STREAM_NAMES[s])
        streams = list(dict.fromkeys(streams)) or ["stdout", "stderr"]
        offsets = {"stdout": request.stdout_offset, "stderr": request.stderr_offset}
        async for stream, attempt, offset, nxt, text in self.engine.logs(request.job_id, streams, offsets, request.follow):
            yield pb.StreamJobLogsResponse(
                stream=STREAM_ENUMS[stream], attempt=attempt, offset=offset, next_offset=nxt, text=text
            )

    async def ListArtifacts(
        self, request: pb.ListArtifactsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListArtifactsResponse:
        size = _page_size(request.page_size, 100, "page_size")
        if len(request.prefix.encode("utf-8", "surrogatepass")) > workdir.MAX_PATH_BYTES:
            raise InvalidArgument.field("prefix", f"at most {workdir.MAX_PATH_BYTES} bytes")
        items = await self.engine.artifacts(request.job_id, request.prefix)
        if request.page_token:
            after = decode_page_token_path(request.page_token)
            if after is None:
                raise InvalidArgument.field("page_token", "is not a token returned by ListArtifacts")
            items = [i for i in items if i[0] > after]
        page = items[:size]
        out = pb.ListArtifactsResponse(
            artifacts=[pb.Artifact(path=p, size_bytes=s, modify_time=timestamp_from_unix(m), checkpoint=c) for p, s, m, c in page]
        )
        if len(items) > size:
            out.next_page_token = encode_page_token_path(page[-1][0])
        return out

    async def DownloadArtifact(
        self, request: pb.DownloadArtifactRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.DownloadArtifactResponse]:
        async for offset, data, total, sha in self.engine.download(request.job_id, request.path, request.offset):
            yield pb.DownloadArtifactResponse(offset=offset, data=data, total_size_bytes=total, sha256=sha)

    async def DeleteJobArtifacts(
        self, request: pb.DeleteJobArtifactsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteJobArtifactsResponse:
        return pb.DeleteJobArtifactsResponse(objects_deleted=await self.engine.delete_artifacts(request.job_id))

    async def DeleteJob(self, request: pb.DeleteJobRequest, context: grpc.aio.ServicerContext) -> pb.DeleteJobResponse:
        removed = await self.engine.delete(request.job_id)
        return pb.DeleteJobResponse(job_id=request.job_id, objects_deleted=removed)

    async def EstimateRequirements(
        self, request: pb.EstimateRequirementsRequest, context: grpc.aio.ServicerContext
    ) -> pb.EstimateRequirementsResponse:
        which = request.WhichOneof("model")
        if which is None:
            raise InvalidArgument.field("model", "exactly one of parameter_count or transformer is required")
        if request.workload == pb.WORKLOAD_KIND_UNSPECIFIED or request.workload not in pb.WorkloadKind.values():
            raise InvalidArgument.field("workload", "must be TRAINING or INFERENCE")
        if request.precision not in PRECISIONS:
            raise InvalidArgument.field("precision", "must be set")
        training = request.workload == pb.WORKLOAD_KIND_TRAINING
        if training and request.optimizer not in OPTIMIZERS:
            raise InvalidArgument.field("optimizer", "is required for training")
        est = sizing.estimate_requirements(
            parameter_count=request.parameter_count if which == "parameter_count" else None,
            shape=_shape(request.transformer) if which == "transformer" else None,
            training=training,
            batch_size=request.batch_size,
            block_size=request.block_size,
            precision=PRECISIONS[request.precision],
            optimizer=OPTIMIZERS.get(request.optimizer),
        )
        return pb.EstimateRequirementsResponse(
            parameter_count=_u64(est.parameter_count, "parameter_count"),
            weights_bytes=_u64(est.weights_bytes, "weights"),
            gradients_bytes=_u64(est.gradients_bytes, "gradients"),
            optimizer_state_bytes=_u64(est.optimizer_state_bytes, "optimizer state"),
            activations_bytes=_u64(est.activations_bytes, "activations"),
            total_bytes=_u64(est.total_bytes, "total"),
            arithmetic=est.arithmetic,
        )

    async def PlanPlacement(
        self, request: pb.PlanPlacementRequest, context: grpc.aio.ServicerContext
    ) -> pb.PlanPlacementResponse:
        models = []
        for i, m in enumerate(request.models):
            if m.precision not in PRECISIONS or m.precision in (pb.PRECISION_MIXED_FP16, pb.PRECISION_MIXED_BF16):
                raise InvalidArgument.field(f"models[{i}].precision", "must be FP32, FP16, BF16, INT8 or INT4")
            which = m.WhichOneof("size")
            models.append(
                sizing.ModelSpec(
                    m.name,
                    PRECISIONS[m.precision],
                    m.parameter_count if which == "parameter_count" else None,
                    _shape(m.transformer) if which == "transformer" else None,
                    m.pinned_device,
                    m.activation_bytes_per_request if m.HasField("activation_bytes_per_request") else None,
                )
            )
        devices = []
        for i, d in enumerate(request.devices):
            kind = {pb.DEVICE_KIND_GPU: "gpu", pb.DEVICE_KIND_CPU: "cpu"}.get(d.kind)
            if kind is None:
                raise InvalidArgument.field(f"devices[{i}].kind", "must be DEVICE_KIND_GPU or DEVICE_KIND_CPU")
            devices.append(sizing.DeviceSpec(d.name, kind, d.memory_bytes))
        plan = sizing.plan_placement(
            models,
            devices,
            headroom_fraction=request.headroom_fraction if request.HasField("headroom_fraction") else None,
            parallel_requests=request.parallel_requests,
            sequence_length=request.sequence_length,
        )
        return pb.PlanPlacementResponse(
            fits=plan.fits,
            assignments=[
                pb.ModelAssignment(
                    model_name=a.model_name,
                    strategy=STRATEGIES[a.strategy],
                    device_names=a.device_names,
                    weights_bytes=_u64(a.weights_bytes, "weights"),
                    activations_bytes=_u64(a.activations_bytes, "activations"),
                    total_bytes=_u64(a.total_bytes, "total"),
                )
                for a in plan.assignments
            ],
            devices=[
                pb.DeviceUsage(
                    device_name=u.name,
                    memory_bytes=u.memory_bytes,
                    usable_bytes=u.usable_bytes,
                    used_bytes=_u64(u.used_bytes, "device usage"),
                    model_names=u.model_names,
                    fits=u.fits,
                )
                for u in plan.devices
            ],
            explanation=plan.explanation,
        )

    async def ListProviders(
        self, request: pb.ListProvidersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListProvidersResponse:
        return pb.ListProvidersResponse(
            providers=[
                pb.ProviderInfo(
                    name=s.name,
                    enabled=s.enabled,
                    credentials_present=s.credentials_present,
                    credentials_hint=s.credentials_hint,
                    supports_spot=s.capabilities.spot,
                    supports_live_logs=s.capabilities.live_logs,
                    manual=s.capabilities.manual,
                    unavailable_reason=s.unavailable_reason,
                )
                for s in self.engine.registry.statuses()
            ]
        )

    async def ListJobProgress(
        self, request: pb.ListJobProgressRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListJobProgressResponse:
        if not 0 <= request.page_size <= 1000:
            raise InvalidArgument.field("page_size", "must be between 0 (the default, 500) and 1000")
        size = request.page_size or 500
        after = 0
        if request.page_token:
            decoded = decode_progress_token(request.page_token)
            if decoded is None:
                raise InvalidArgument.field("page_token", "is not a token returned by ListJobProgress")
            after = decoded
        await self.engine.get(request.job_id)  # NOT_FOUND for an unknown job
        rows = await self.engine.store.list_progress(request.job_id, after_seq=after, limit=size + 1)
        page = rows[:size]
        out = pb.ListJobProgressResponse(
            points=[
                pb.ProgressPoint(
                    step=p.step, total_steps=p.total_steps, metrics=p.metrics, time=timestamp_from_unix(p.time), attempt=p.attempt
                )
                for _seq, p in page
            ],
            resume_page_token=encode_progress_token(page[-1][0]) if page else request.page_token,
        )
        if len(rows) > size:
            out.next_page_token = encode_progress_token(page[-1][0])
        return out


def encode_page_token_path(path: str) -> str:
    """Opaque ListArtifacts page token: the last path sent."""
    return base64.urlsafe_b64encode(("path:" + path).encode()).decode()


def decode_page_token_path(token: str) -> str | None:
    """The path in a ListArtifacts page token, or None when malformed."""
    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return text[5:] if text.startswith("path:") else None
