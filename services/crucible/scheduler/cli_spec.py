"""The JobSpec `crucible jobs submit` sends: built from its flags, or from a job file with the flags on top.

A mistake in what was given ends the command with exit status 2 and a message on stderr, as argparse's usage errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from crucible.api.cost.v1 import offer_pb2
from crucible.api.scheduler.v1 import job_pb2
from crucible.runtime.convert import duration_from_seconds

POLICIES = {
    "explicit": job_pb2.PROVIDER_POLICY_EXPLICIT,
    "cheapest": job_pb2.PROVIDER_POLICY_CHEAPEST,
    "fastest": job_pb2.PROVIDER_POLICY_FASTEST,
    "ordered": job_pb2.PROVIDER_POLICY_ORDERED,
}


def usage_error(message: str) -> SystemExit:
    """A submit that cannot be sent as given: the message on stderr, exit status 2 (as argparse's usage errors)."""
    print(f"crucible jobs submit: {message}", file=sys.stderr)
    return SystemExit(2)


def apply_job_file(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """`crucible jobs submit job.yaml [options]`: the file's values, then the options given after it on top."""
    from crucible.clients.jobfile import JobFileError, load_job_file

    path, rest = args.command[0], args.command[1:]
    try:
        job = load_job_file(path)
    except JobFileError as err:
        raise usage_error(str(err)) from None
    given = parser.parse_args(rest) if rest else argparse.Namespace(command=[])
    if given.command:
        raise usage_error(f"the job file {path} holds the command (its `run:`); remove {given.command}")
    before = {k: v for k, v in vars(args).items() if k != "command" and v != parser.get_default(k)}
    for field in dataclasses.fields(job):
        value = getattr(job, field.name)
        if value is not None and field.name != "command":
            setattr(args, field.name, value)
    args.command = job.command
    given_options = {k: v for k, v in vars(given).items() if k != "command" and v != parser.get_default(k)}
    for key, value in {**before, **given_options}.items():  # options, before or after the file, win over its values
        setattr(args, key, value)


def is_job_file(command: list[str]) -> bool:
    """A submit whose first word is a .yaml/.yml file is a job file, not a command."""
    return bool(command) and command[0] != "--" and command[0].lower().endswith((".yaml", ".yml"))


def spec_from_args(args: argparse.Namespace) -> job_pb2.JobSpec:
    """The JobSpec of a submit's flags (a job file's values already applied)."""
    providers = args.provider or []
    policy = args.policy or ("explicit" if len(providers) == 1 else "cheapest")
    env = {}
    for item in args.env or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise usage_error(f"--env {item!r} must be NAME=VALUE")
        env[key] = value
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise usage_error("nothing to run: give a job file (crucible jobs submit job.yaml) or a command after --")
    names, count = args.gpus if args.gpus is not None else ([], 1 if args.gpu else 0)
    spec = job_pb2.JobSpec(
        display_name=args.name,
        command=command,
        env=env,
        provider_policy=POLICIES[policy],
        providers=providers,
        spot_allowed=args.spot,
        checkpoint_dir=args.checkpoint_dir,
        budget_scope=args.scope,
        resources=offer_pb2.ResourceRequirements(
            gpu_names=[*(args.gpu or []), *names], gpu_count=count, min_gpu_memory_gib=args.gpu_memory_gib
        ),
        restart_policy=job_pb2.RestartPolicy(max_restarts_on_errors=args.max_restarts),
    )
    for item in args.input or []:  # URI, or PATH=URI (a URI may itself hold '=')
        path, sep, uri = item.partition("=")
        if not sep or not uri.startswith(("builtin:", "file:", "s3:")):
            path, uri = "", item
        spec.inputs.add(uri=uri, path=path)
    if args.code_dir and args.server_code_dir:
        spec.code_dir = str(Path(args.code_dir).resolve())  # a path on the scheduler's host, allowed by --code-roots
    elif args.code_dir:
        from crucible.clients.scheduler import pack_code_dir

        try:
            spec.code_archive = pack_code_dir(args.code_dir)
        except (OSError, ValueError) as err:
            raise usage_error(f"--code-dir: {err}") from None
    for field, value in (("max_duration", args.max_duration), ("expected_duration", args.expected_duration)):
        if value is not None:
            getattr(spec, field).CopyFrom(duration_from_seconds(value))
    if args.max_cost is not None:
        spec.max_cost_usd = args.max_cost
    if args.max_price is not None:
        spec.max_price_usd_per_hour = args.max_price
    return spec
