"""`crucible jobs ...`: submit, list, inspect, follow, cancel jobs and fetch their artifacts on a running scheduler.

Each command talks to the scheduler at --address (default $CRUCIBLE_SCHEDULER_ADDRESS or 127.0.0.1:50054).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import grpc

from crucible.api.scheduler.v1 import job_pb2
from crucible.api.scheduler.v1 import scheduler_service_pb2 as pb
from crucible.api.scheduler.v1 import scheduler_service_pb2_grpc as pb_grpc
from crucible.clients.channel import add_connection_arguments, cli_channel_config, open_channel
from crucible.clients.cli_common import message_dict, parse_duration, parse_gpus, print_json_line, report_rpc_error
from crucible.clients.tables import format_table
from crucible.scheduler.cli_spec import POLICIES, apply_job_file, is_job_file, spec_from_args
from crucible.scheduler.cli_text import end_reason, money, progress_text, state_name, status_line

SERVICE = "crucible.scheduler.v1.SchedulerService"


async def _call(args: argparse.Namespace, fn: Any) -> int:
    try:
        config = cli_channel_config("scheduler", args)
    except ValueError as err:
        print(f"crucible jobs: {err}", file=sys.stderr)
        return 2
    args.timeout_s = config.timeout_s
    async with open_channel(config, SERVICE) as channel:
        stub = pb_grpc.SchedulerServiceStub(channel)
        try:
            return await fn(stub)
        except grpc.RpcError as err:
            return report_rpc_error(err, "crucible jobs", "scheduler", ",".join(config.addresses))


def _json_line(message: Any) -> None:
    """One protobuf message as one compact JSON line, proto field names (every `--json`: one object per line)."""
    print_json_line(message)


async def _follow(stub: pb_grpc.SchedulerServiceAsyncStub, job_id: str, show_logs: bool) -> int:
    tty = sys.stdout.isatty()
    last = None

    async def logs() -> None:
        async for chunk in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=job_id, follow=True)):
            stream = sys.stderr if chunk.stream == pb.LOG_STREAM_STDERR else sys.stdout
            if tty:
                stream.write("\r\x1b[K")
            stream.write(chunk.text)
            stream.flush()

    task = asyncio.create_task(logs()) if show_logs else None
    shown = ""
    async for reply in stub.WatchJob(pb.WatchJobRequest(job_id=job_id)):
        last = reply.job
        line = status_line(last)
        if tty:
            sys.stdout.write("\r\x1b[K" + line)
            sys.stdout.flush()
        elif line != shown:  # into a file or a pipe: one line per change, not one per update of the job
            print(line, flush=True)
        shown = line
    if task is not None:
        await task
    if tty:
        print()
    if last is None:
        print(f"{job_id}: the scheduler sent no state", file=sys.stderr)
        return 1
    print(f"{job_id}: {state_name(last.state)}: {last.transitions[-1].reason}")
    return 0 if last.state == job_pb2.JOB_STATE_SUCCEEDED else 1


def estimate_line(job: job_pb2.Job) -> str:
    """The "estimated cost: ..." line of a created or previewed job, from the note its first transition keeps."""
    note = job.transitions[0].reason.removeprefix("created; ") if job.transitions else ""
    if note.startswith("estimated cost unknown: "):
        why = note.removeprefix("estimated cost unknown: ").removeprefix("unknown: ")
        return f"estimated cost: unknown ({why})"
    return f"estimated cost: {note.removeprefix('estimated ')}" if note else f"estimated cost: {money(job)[0]}"


def cmd_submit(args: argparse.Namespace) -> int:
    """Validate, show the chosen offer and estimated cost, create, and optionally follow."""
    if is_job_file(args.command):
        apply_job_file(args, args.submit_parser)
    spec = spec_from_args(args)

    async def run(stub: pb_grpc.SchedulerServiceAsyncStub) -> int:
        preview = (await stub.CreateJob(pb.CreateJobRequest(spec=spec, validate_only=True), timeout=args.timeout_s)).job
        if args.dry_run:
            return _show_dry_run(args, preview)
        o = preview.offer
        gpu = f"{o.gpu_count}x {o.gpu_name}" if o.gpu_count else "CPU"
        price = f"${o.price_usd_per_hour:.4f}/h" if not o.price_source.startswith("unknown") else "price unknown"
        if not args.json:
            print(f"offer: {o.offer_id} ({gpu}, {price}; {o.price_source})")
            print(estimate_line(preview))
        request_id = args.request_id or str(uuid.uuid4())
        job = (await stub.CreateJob(pb.CreateJobRequest(spec=spec, request_id=request_id), timeout=args.timeout_s)).job
        if args.json:  # the created job, one line, like `jobs get --json`
            print_json_line(job)
        else:
            print(f"job {job.job_id} {state_name(job.state)}")
        if args.follow:
            return await _follow(stub, job.job_id, show_logs=not args.no_logs)
        return 0

    return asyncio.run(_call(args, run))


def _show_dry_run(args: argparse.Namespace, preview: job_pb2.Job) -> int:
    """The chosen offer, the estimate and the exact launch request(s) the first attempt would send (key redacted)."""
    from crucible.scheduler.providers import preview as launch_preview

    try:
        launch = launch_preview.describe(preview, launch_preview.read_settings(args.provider_settings))
    except ValueError as err:
        print(f"crucible jobs submit: {err}", file=sys.stderr)
        return 2
    status = 1 if launch.problems else 0  # a launch that would fail is not a successful dry run
    if args.json:
        print_json_line(
            {
                "offer": message_dict(preview.offer),
                "estimated_usd": preview.cost.estimated_usd,
                "estimate": preview.transitions[0].reason,
                "launch": launch.as_dict(),
            }
        )
        return status
    o = preview.offer
    gpu = f"{o.gpu_count}x {o.gpu_name}" if o.gpu_count else "CPU"
    price = f"${o.price_usd_per_hour:.4f}/h" if not o.price_source.startswith("unknown") else "price unknown"
    region = f", region {o.region}" if o.region else ""
    print(f"offer: {o.offer_id} ({gpu}, {price}{region}; {o.price_source})")
    print(estimate_line(preview))
    for request in launch.requests:
        print(f"launch request: {request['method']} {request['url']}")
        for name, value in request["headers"].items():
            print(f"  {name}: {value}")
        print("  " + json.dumps(request["json"], indent=2).replace("\n", "\n  "))
    for problem in launch.problems:
        print(f"launch problem: {problem}", file=sys.stderr)
    if not launch.requests and not launch.problems:
        from crucible.scheduler.providers.registry import OFFLINE_PROVIDERS

        where = "runs on the scheduler's machine" if launch.provider in OFFLINE_PROVIDERS else "is run by hand from a notebook"
        print(f"launch request: none ({launch.provider} {where})")
    if launch.requests:
        print(
            f"(built here by the {launch.provider} adapter from {args.provider_settings or 'default settings'}; "
            f"{launch_preview.PLACEHOLDER_JOB_ID} is assigned at creation)"
        )
    return status


def cmd_list(args: argparse.Namespace) -> int:
    """A table of jobs, newest first."""
    states = [job_pb2.JobState.Value("JOB_STATE_" + s.upper()) for s in args.state or []]

    async def run(stub: pb_grpc.SchedulerServiceAsyncStub) -> int:
        reply = await stub.ListJobs(
            pb.ListJobsRequest(states=states, providers=args.provider or [], budget_scope=args.scope, page_size=args.limit),
            timeout=args.timeout_s,
        )
        if args.json:
            for j in reply.jobs:
                _json_line(j)
            return 0
        rows = []
        for j in reply.jobs:
            _est, spent = money(j)
            created = j.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
            reason = end_reason(j)
            rows.append(
                (
                    j.job_id,
                    state_name(j.state),
                    j.provider,
                    j.spec.display_name[:30],
                    created,
                    progress_text(j, 10),
                    spent,
                    reason if len(reason) <= 60 else reason[:59] + "…",
                )
            )
        print(format_table(("job", "state", "provider", "name", "created (UTC)", "progress", "spent", "reason"), rows))
        return 0

    return asyncio.run(_call(args, run))


def cmd_get(args: argparse.Namespace) -> int:
    """The whole job as JSON."""

    async def run(stub: pb_grpc.SchedulerServiceAsyncStub) -> int:
        job = (await stub.GetJob(pb.GetJobRequest(job_id=args.job_id), timeout=args.timeout_s)).job
        if args.json:
            print_json_line(job)
        else:
            print(json.dumps(message_dict(job), indent=2))
        return 0

    return asyncio.run(_call(args, run))


def cmd_logs(args: argparse.Namespace) -> int:
    """Print the job's stdout/stderr; -f keeps following until the job ends."""
    streams = {"stdout": [pb.LOG_STREAM_STDOUT], "stderr": [pb.LOG_STREAM_STDERR], "both": []}[args.stream]

    async def run(stub: pb_grpc.SchedulerServiceAsyncStub) -> int:
        async for chunk in stub.StreamJobLogs(pb.StreamJobLogsRequest(job_id=args.job_id, streams=streams, follow=args.follow)):
            out = sys.stderr if chunk.stream == pb.LOG_STREAM_STDERR else sys.stdout
            out.write(chunk.text)
            out.flush()
        return 0

    return asyncio.run(_call(args, run))


def cmd_watch(args: argparse.Namespace) -> int:
    """The live view without logs."""
    return asyncio.run(_call(args, lambda stub: _follow(stub, args.job_id, show_logs=False)))


def cmd_cancel(args: argparse.Namespace) -> int:
    """Cancel a job."""

    async def run(stub: pb_grpc.SchedulerServiceAsyncStub) -> int:
        job = (await stub.CancelJob(pb.CancelJobRequest(job_id=args.job_id, reason=args.reason), timeout=args.timeout_s)).job
        if args.json:
            print_json_line(job)
        else:
            print(f"{job.job_id} {state_name(job.state)}")
        return 0

    return asyncio.run(_call(args, run))


def cmd_delete(args: argparse.Namespace) -> int:
    """Delete an ended job: its record, progress, folder and stored objects (DeleteJob)."""

    async def run(stub: pb_grpc.SchedulerServiceAsyncStub) -> int:
        reply = await stub.DeleteJob(pb.DeleteJobRequest(job_id=args.job_id), timeout=args.timeout_s)
        if args.json:
            _json_line(reply)
        else:
            print(f"deleted {reply.job_id} ({reply.objects_deleted} stored object(s))")
        return 0

    return asyncio.run(_call(args, run))


def cmd_artifacts(args: argparse.Namespace) -> int:
    """A table of the job's files (from its working folder, machine or the object store), or with --delete their
    removal from the store once the job has ended."""

    async def run(stub: pb_grpc.SchedulerServiceAsyncStub) -> int:
        if args.delete:
            deleted = await stub.DeleteJobArtifacts(pb.DeleteJobArtifactsRequest(job_id=args.job_id), timeout=args.timeout_s)
            if args.json:
                _json_line(deleted)
            else:
                print(f"deleted {deleted.objects_deleted} stored object(s) of {args.job_id}")
            return 0
        rows, token = [], ""
        while True:
            reply = await stub.ListArtifacts(
                pb.ListArtifactsRequest(job_id=args.job_id, prefix=args.prefix, page_token=token), timeout=args.timeout_s
            )
            if args.json:
                for a in reply.artifacts:
                    _json_line(a)
            rows += [
                (
                    a.path,
                    f"{a.size_bytes:,}",
                    a.modify_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
                    "yes" if a.checkpoint else "",
                )
                for a in reply.artifacts
            ]
            token = reply.next_page_token
            if not token:
                break
        if not args.json:
            print(format_table(("path", "bytes", "modified (UTC)", "checkpoint"), rows))
        return 0

    return asyncio.run(_call(args, run))


def cmd_download(args: argparse.Namespace) -> int:
    """Download one artifact, resuming a partial file, and check its SHA-256."""
    out = Path(args.output or Path(args.path).name)
    offset = out.stat().st_size if out.exists() and args.resume else 0

    async def run(stub: pb_grpc.SchedulerServiceAsyncStub) -> int:
        sha = ""
        with open(out, "ab" if offset else "wb") as f:
            async for chunk in stub.DownloadArtifact(
                pb.DownloadArtifactRequest(job_id=args.job_id, path=args.path, offset=offset)
            ):
                f.write(chunk.data)
                sha = chunk.sha256 or sha
        received = hashlib.sha256()  # the server's sha256 covers the bytes it sent, from the offset on
        with open(out, "rb") as f:
            f.seek(offset)
            while block := f.read(1 << 20):
                received.update(block)
        if sha and received.hexdigest() != sha:
            print(f"crucible jobs: checksum mismatch for {out}: got {received.hexdigest()}, server says {sha}", file=sys.stderr)
            return 1
        local = hashlib.sha256(out.read_bytes()).hexdigest()
        print(f"{out} ({out.stat().st_size:,} bytes, sha256 {local})")
        return 0

    return asyncio.run(_call(args, run))


def cmd_providers(args: argparse.Namespace) -> int:
    """A table of providers and whether they can be used."""

    async def run(stub: pb_grpc.SchedulerServiceAsyncStub) -> int:
        reply = await stub.ListProviders(pb.ListProvidersRequest(), timeout=args.timeout_s)
        if args.json:
            for p in reply.providers:
                _json_line(p)
            return 0
        rows = [
            (
                p.name,
                "yes" if p.enabled else "no",
                "yes" if p.credentials_present else "no",
                "yes" if p.supports_spot else "",
                p.unavailable_reason or "usable",
                p.credentials_hint,
            )
            for p in reply.providers
        ]
        print(format_table(("provider", "enabled", "credentials", "spot", "status", "credentials from"), rows))
        return 0

    return asyncio.run(_call(args, run))


def cmd_progress(args: argparse.Namespace) -> int:
    """Every progress point of a job, oldest first (all pages of ListJobProgress)."""

    async def run(stub: pb_grpc.SchedulerServiceAsyncStub) -> int:
        rows, token = [], ""
        while True:
            reply = await stub.ListJobProgress(
                pb.ListJobProgressRequest(job_id=args.job_id, page_size=1000, page_token=token), timeout=args.timeout_s
            )
            for point in reply.points:
                if args.json:
                    _json_line(point)
                else:
                    metrics = " ".join(f"{k} {v:.6g}" for k, v in sorted(point.metrics.items()))
                    rows.append(
                        (
                            point.step,
                            point.total_steps or "",
                            point.attempt,
                            point.time.ToDatetime().strftime("%H:%M:%S.%f")[:-3],
                            metrics,
                        )
                    )
            token = reply.next_page_token
            if not token:
                break
        if not args.json:
            print(format_table(("step", "total", "attempt", "time (UTC)", "metrics"), rows))
        return 0

    return asyncio.run(_call(args, run))


def add_commands(subparsers: Any) -> None:
    """Add `crucible jobs ...` to the main parser."""
    jobs = subparsers.add_parser("jobs", help="submit and manage GPU jobs on the scheduler")
    sub = jobs.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser, json_output: bool = True) -> argparse.ArgumentParser:
        add_connection_arguments(
            p, address_help="scheduler host:port (default $CRUCIBLE_SCHEDULER_ADDRESS, the client config, or 127.0.0.1:50054)"
        )
        if json_output:
            p.add_argument("--json", action="store_true", help="machine-readable output (lists: one JSON object a line)")
        return p

    s = common(
        sub.add_parser(
            "submit",
            help="show the chosen offer and estimated cost, then create the job",
            description="crucible jobs submit job.yaml [OPTIONS], or crucible jobs submit [OPTIONS] -- PROGRAM ARGS. A job "
            "file holds name, resources (gpus: A100:1, ...), workdir, setup, run, envs, inputs, provider and limits; options "
            "given after it override its values (see the README, 'The CLI').",
        )
    )
    s.add_argument("--provider", action="append", help="provider to use (repeat for a set or an order)")
    s.add_argument("--policy", choices=sorted(POLICIES), help="default: explicit with one --provider, else cheapest")
    s.add_argument("--code-dir", default="", help="folder packed here and sent as the job's code (code_archive)")
    s.add_argument(
        "--server-code-dir",
        action="store_true",
        help="send --code-dir as a path on the scheduler's host instead (it must allow it: --code-roots)",
    )
    s.add_argument("--name", default="", help="display name")
    s.add_argument(
        "--gpu", action="append", help="acceptable GPU model or family, e.g. A100 (every A100) or A100-80GB (repeatable)"
    )
    s.add_argument(
        "--gpus",
        type=parse_gpus,
        default=None,
        metavar="[NAME:]COUNT",
        help="GPUs per instance: A100:1, H100:8, or a count (default 1 with --gpu, else 0 = CPU only)",
    )
    s.add_argument("--gpu-memory-gib", type=float, default=0.0)
    s.add_argument("--max-duration", type=parse_duration, default=None, help="e.g. 90s, 30m, 1h, 1h30m")
    s.add_argument("--expected-duration", type=parse_duration, default=None, help="e.g. 30m, for the estimate")
    s.add_argument("--max-cost", type=float, default=None, help="USD cap for the whole job")
    s.add_argument("--max-price", type=float, default=None, help="USD per hour cap")
    s.add_argument("--spot", action="store_true", help="allow spot offers")
    s.add_argument("--env", action="append", help="NAME=VALUE (repeatable)")
    s.add_argument("--checkpoint-dir", default="", help="relative checkpoint folder (default checkpoints)")
    s.add_argument(
        "--input",
        action="append",
        metavar="[PATH=]URI",
        help="dataset staged into the working folder before the command runs: builtin:tinyshakespeare, "
        "file:///... or s3://... (inside the scheduler's --input-roots), optionally after PATH= "
        "(relative destination; default data/<name>) (repeatable)",
    )
    s.add_argument("--max-restarts", type=int, default=0, help="restarts after the command fails")
    s.add_argument("--scope", default="", help="budget scope, e.g. project:nanogpt")
    s.add_argument("--request-id", default="", help="idempotency key (default: a new UUID)")
    s.add_argument(
        "--dry-run", action="store_true", help="only show the offer, the estimate and the exact launch request (key redacted)"
    )
    s.add_argument(
        "--provider-settings",
        default=os.environ.get("CRUCIBLE_SCHEDULER_PROVIDER_SETTINGS_FILE", ""),
        metavar="JSON",
        help="with --dry-run: the scheduler's provider settings file (default $CRUCIBLE_SCHEDULER_PROVIDER_SETTINGS_FILE)",
    )
    s.add_argument("-f", "--follow", action="store_true", help="live view until the job ends")
    s.add_argument("--no-logs", action="store_true", help="with --follow, show only the status line")
    s.add_argument("command", nargs=argparse.REMAINDER, help="job.yaml, or -- program and arguments")
    s.set_defaults(handler=cmd_submit, submit_parser=s)

    p = common(sub.add_parser("list", help="jobs, newest first"))
    p.add_argument("--state", action="append", help="e.g. running (repeatable)")
    p.add_argument("--provider", action="append")
    p.add_argument("--scope", default="")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(handler=cmd_list)

    for name, fn, text in (("get", cmd_get, "one job as JSON"), ("watch", cmd_watch, "live view of a job")):
        p = common(sub.add_parser(name, help=text), json_output=name == "get")
        p.add_argument("job_id")
        p.set_defaults(handler=fn)

    p = common(sub.add_parser("logs", help="a job's output"), json_output=False)
    p.add_argument("job_id")
    p.add_argument("-f", "--follow", action="store_true")
    p.add_argument("--stream", choices=("both", "stdout", "stderr"), default="both")
    p.set_defaults(handler=cmd_logs)

    p = common(sub.add_parser("cancel", help="cancel a job"))
    p.add_argument("job_id")
    p.add_argument("--reason", default="")
    p.set_defaults(handler=cmd_cancel)

    p = common(sub.add_parser("delete", help="delete an ended job: its record, progress, folder and stored files"))
    p.add_argument("job_id")
    p.set_defaults(handler=cmd_delete)

    p = common(sub.add_parser("artifacts", help="files a job produced"))
    p.add_argument("job_id")
    p.add_argument("--prefix", default="")
    p.add_argument(
        "--delete",
        action="store_true",
        help="remove the job's objects from the artifact store and its working folder (ended jobs only)",
    )
    p.set_defaults(handler=cmd_artifacts)

    p = common(sub.add_parser("download", help="download one artifact"), json_output=False)
    p.add_argument("job_id")
    p.add_argument("path")
    p.add_argument("-o", "--output", default="")
    p.add_argument("--resume", action="store_true", help="continue a partial download")
    p.set_defaults(handler=cmd_download)

    p = common(sub.add_parser("progress", help="a job's progress history (every parsed step and metric)"))
    p.add_argument("job_id")
    p.set_defaults(handler=cmd_progress)

    p = common(sub.add_parser("providers", help="providers and their status"))
    p.set_defaults(handler=cmd_providers)
