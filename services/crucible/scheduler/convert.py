"""Conversions between the scheduler's protobuf messages (the API and the job database's file format) and its plain
domain types: the one module where a Job, JobSpec or Offer message becomes a domain value, or is made from one.

The engine works on `domain.record.Job`; the servicer, the job database (rows and the candidate offers in `meta`) and
the cost service's client call these functions at their edges.
"""

from __future__ import annotations

import hashlib

from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from crucible.api.cost.v1 import offer_pb2
from crucible.api.scheduler.v1 import job_pb2
from crucible.runtime.convert import duration_from_ns, timestamp_from_ns
from crucible.scheduler.domain.job import Offer
from crucible.scheduler.domain.record import AttemptRecord, Job, JobCost, JobProgress, TransitionRecord
from crucible.scheduler.domain.spec import Duration, JobInput, JobSpec, Resources, RestartPolicy

# --- times -------------------------------------------------------------------------------------------------------


def _ns(message: Message, field: str) -> int | None:
    """A Timestamp or Duration field as nanoseconds, None when unset."""
    if not message.HasField(field):
        return None
    value: timestamp_pb2.Timestamp | duration_pb2.Duration = getattr(message, field)
    return value.ToNanoseconds()


def _duration(value: Duration) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=value.seconds, nanos=value.nanos)


# --- offers ------------------------------------------------------------------------------------------------------


def offer(message: offer_pb2.Offer) -> Offer:
    """An Offer message as a domain offer (every field kept)."""
    return Offer(
        offer_id=message.offer_id,
        provider=message.provider,
        region=message.region,
        spot=message.spot,
        instance_type=message.instance_type,
        gpu_name=message.gpu_name,
        gpu_count=message.gpu_count,
        gpu_memory_gib=message.gpu_memory_gib,
        vcpus=message.vcpus,
        memory_gib=message.memory_gib,
        price_usd_per_hour=message.price_usd_per_hour,
        storage_price_usd_per_gb_hour=message.storage_price_usd_per_gb_hour,
        egress_price_usd_per_gb=message.egress_price_usd_per_gb,
        billing_granularity=message.billing_granularity,
        availability=message.availability,
        price_origin=message.price_origin,
        price_source=message.price_source,
        price_observed_at=_ns(message, "price_observed_at"),
    )


def offer_message(value: Offer) -> offer_pb2.Offer:
    """A domain offer as the Offer message."""
    out = offer_pb2.Offer(
        offer_id=value.offer_id,
        provider=value.provider,
        instance_type=value.instance_type,
        region=value.region,
        gpu_name=value.gpu_name,
        gpu_count=value.gpu_count,
        gpu_memory_gib=value.gpu_memory_gib,
        vcpus=value.vcpus,
        memory_gib=value.memory_gib,
        spot=value.spot,
        price_usd_per_hour=value.price_usd_per_hour,
        storage_price_usd_per_gb_hour=value.storage_price_usd_per_gb_hour,
        egress_price_usd_per_gb=value.egress_price_usd_per_gb,
        billing_granularity=offer_pb2.BillingGranularity.ValueType(value.billing_granularity),
        availability=offer_pb2.Availability.ValueType(value.availability),
        price_origin=offer_pb2.PriceOrigin.ValueType(value.price_origin),
        price_source=value.price_source,
    )
    if value.price_observed_at is not None:
        out.price_observed_at.CopyFrom(timestamp_from_ns(value.price_observed_at))
    return out


def offer_hex(value: Offer) -> str:
    """An offer as the job database's `meta` column stores a candidate: the Offer message, serialized, in hex."""
    return offer_message(value).SerializeToString().hex()


def offer_from_hex(text: str) -> Offer:
    """A candidate offer as `meta` stores it (`offer_hex`), read back."""
    message = offer_pb2.Offer()
    message.ParseFromString(bytes.fromhex(text))
    return offer(message)


# --- the job's spec ----------------------------------------------------------------------------------------------


def spec(message: job_pb2.JobSpec) -> JobSpec:
    """A JobSpec message as the domain spec, with its digest and size (code_archive excluded) as sent."""
    r = message.resources
    restart = message.restart_policy
    code = message.WhichOneof("code")
    return JobSpec(
        display_name=message.display_name,
        command=tuple(message.command),
        code_dir=message.code_dir if code == "code_dir" else None,
        code_archive=message.code_archive if code == "code_archive" else None,
        container_image=message.container_image,
        env=dict(message.env),
        resources=Resources(tuple(r.gpu_names), r.gpu_count, r.min_gpu_memory_gib, r.min_vcpus, r.min_memory_gib),
        max_duration=(
            Duration(message.max_duration.seconds, message.max_duration.nanos) if message.HasField("max_duration") else None
        ),
        expected_duration=(
            Duration(message.expected_duration.seconds, message.expected_duration.nanos)
            if message.HasField("expected_duration")
            else None
        ),
        max_cost_usd=message.max_cost_usd if message.HasField("max_cost_usd") else None,
        max_price_usd_per_hour=message.max_price_usd_per_hour if message.HasField("max_price_usd_per_hour") else None,
        provider_policy=message.provider_policy,
        providers=tuple(message.providers),
        spot_allowed=message.spot_allowed,
        checkpoint_dir=message.checkpoint_dir,
        restart_policy=RestartPolicy(
            restart.max_restarts_on_errors,
            restart.recover_on_preemption if restart.HasField("recover_on_preemption") else None,
        ),
        budget_scope=message.budget_scope,
        inputs=tuple(JobInput(i.uri, i.path) for i in message.inputs),
        wire_sha256=hashlib.sha256(message.SerializeToString(deterministic=True)).hexdigest(),
        wire_bytes=message.ByteSize() - len(message.code_archive),
    )


def spec_message(value: JobSpec) -> job_pb2.JobSpec:
    """The domain spec as the JobSpec message."""
    out = job_pb2.JobSpec(
        display_name=value.display_name,
        command=value.command,
        container_image=value.container_image,
        env=value.env,
        provider_policy=job_pb2.ProviderPolicy.ValueType(value.provider_policy),
        providers=value.providers,
        spot_allowed=value.spot_allowed,
        checkpoint_dir=value.checkpoint_dir,
        budget_scope=value.budget_scope,
        inputs=[job_pb2.JobInput(uri=i.uri, path=i.path) for i in value.inputs],
    )
    if value.code_dir is not None:
        out.code_dir = value.code_dir
    elif value.code_archive is not None:
        out.code_archive = value.code_archive
    r = value.resources
    if r != Resources():
        out.resources.gpu_names.extend(r.gpu_names)
        out.resources.gpu_count = r.gpu_count
        out.resources.min_gpu_memory_gib = r.min_gpu_memory_gib
        out.resources.min_vcpus = r.min_vcpus
        out.resources.min_memory_gib = r.min_memory_gib
    if value.max_duration is not None:
        out.max_duration.CopyFrom(_duration(value.max_duration))
    if value.expected_duration is not None:
        out.expected_duration.CopyFrom(_duration(value.expected_duration))
    if value.max_cost_usd is not None:
        out.max_cost_usd = value.max_cost_usd
    if value.max_price_usd_per_hour is not None:
        out.max_price_usd_per_hour = value.max_price_usd_per_hour
    if value.restart_policy != RestartPolicy():
        out.restart_policy.max_restarts_on_errors = value.restart_policy.max_restarts_on_errors
        if value.restart_policy.recover_on_preemption is not None:
            out.restart_policy.recover_on_preemption = value.restart_policy.recover_on_preemption
    return out


# --- the job -----------------------------------------------------------------------------------------------------


def job(message: job_pb2.Job) -> Job:
    """A Job message (as the job database stores it) as the engine's record."""
    cost, progress = message.cost, message.progress
    return Job(
        job_id=message.job_id,
        spec=spec(message.spec) if message.HasField("spec") else JobSpec(),
        state=message.state,
        transitions=[
            TransitionRecord(t.from_state, t.to_state, _ns(t, "time"), t.reason, t.attempt) for t in message.transitions
        ],
        provider=message.provider,
        offer=offer(message.offer) if message.HasField("offer") else None,
        attempts=[
            AttemptRecord(
                attempt=a.attempt,
                provider=a.provider,
                offer=offer(a.offer) if a.HasField("offer") else None,
                provider_ref=a.provider_ref,
                outcome=a.outcome,
                exit_code=a.exit_code if a.HasField("exit_code") else None,
                reason=a.reason,
                create_time=_ns(a, "create_time"),
                start_time=_ns(a, "start_time"),
                end_time=_ns(a, "end_time"),
            )
            for a in message.attempts
        ],
        cost=JobCost(cost.estimated_usd, cost.spent_usd, _ns(cost, "update_time")),
        progress=JobProgress(
            step=progress.step if progress.HasField("step") else None,
            total_steps=progress.total_steps if progress.HasField("total_steps") else None,
            epoch=progress.epoch if progress.HasField("epoch") else None,
            total_epochs=progress.total_epochs if progress.HasField("total_epochs") else None,
            metrics=dict(progress.metrics),
            eta=_ns(progress, "eta"),
            update_time=_ns(progress, "update_time"),
        ),
        latest_checkpoint=message.latest_checkpoint,
        create_time=_ns(message, "create_time"),
        update_time=_ns(message, "update_time"),
        start_time=_ns(message, "start_time"),
        end_time=_ns(message, "end_time"),
        code_archive_sha256=message.code_archive_sha256,
        logs_truncated=message.logs_truncated,
        log_bytes_dropped=message.log_bytes_dropped,
    )


def _set_time(target: timestamp_pb2.Timestamp, ns: int | None) -> None:
    if ns is not None:
        target.CopyFrom(timestamp_from_ns(ns))


def job_message(value: Job) -> job_pb2.Job:
    """The engine's record as the Job message (what the API answers and the job database stores)."""
    out = job_pb2.Job(
        job_id=value.job_id,
        state=job_pb2.JobState.ValueType(value.state),
        provider=value.provider,
        latest_checkpoint=value.latest_checkpoint,
        code_archive_sha256=value.code_archive_sha256,
        logs_truncated=value.logs_truncated,
        log_bytes_dropped=value.log_bytes_dropped,
    )
    if value.spec != JobSpec():
        out.spec.CopyFrom(spec_message(value.spec))
    for t in value.transitions:
        added = out.transitions.add(
            from_state=job_pb2.JobState.ValueType(t.from_state),
            to_state=job_pb2.JobState.ValueType(t.to_state),
            reason=t.reason,
            attempt=t.attempt,
        )
        _set_time(added.time, t.time)
    if value.offer is not None:
        out.offer.CopyFrom(offer_message(value.offer))
    for a in value.attempts:
        attempt = out.attempts.add(
            attempt=a.attempt,
            provider=a.provider,
            provider_ref=a.provider_ref,
            outcome=job_pb2.AttemptOutcome.ValueType(a.outcome),
            reason=a.reason,
        )
        if a.offer is not None:
            attempt.offer.CopyFrom(offer_message(a.offer))
        if a.exit_code is not None:
            attempt.exit_code = a.exit_code
        _set_time(attempt.create_time, a.create_time)
        _set_time(attempt.start_time, a.start_time)
        _set_time(attempt.end_time, a.end_time)
    if value.cost != JobCost():
        out.cost.estimated_usd = value.cost.estimated_usd
        out.cost.spent_usd = value.cost.spent_usd
        _set_time(out.cost.update_time, value.cost.update_time)
    p = value.progress
    if p != JobProgress():
        out.progress.SetInParent()
        for name in ("step", "total_steps", "epoch", "total_epochs"):
            number = getattr(p, name)
            if number is not None:
                setattr(out.progress, name, number)
        for metric, number in p.metrics.items():
            out.progress.metrics[metric] = number
        if p.eta is not None:
            out.progress.eta.CopyFrom(duration_from_ns(p.eta))
        _set_time(out.progress.update_time, p.update_time)
    for name in ("create_time", "update_time", "start_time", "end_time"):
        _set_time(getattr(out, name), getattr(value, name))
    return out
