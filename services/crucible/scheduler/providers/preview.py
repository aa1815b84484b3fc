"""The launch request a job would send to its provider, built without calling anything (`jobs submit --dry-run`).

The request comes from the same adapter code the scheduler runs, with the provider settings file given here.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from crucible.api.scheduler.v1 import job_pb2
from crucible.scheduler.providers.base import LaunchSpec, OfferRef
from crucible.scheduler.providers.credentials import REDACTED
from crucible.scheduler.providers.http import LaunchPreview
from crucible.scheduler.providers.registry import ADAPTERS, OFFLINE_PROVIDERS

#: Stands for the id the scheduler assigns at creation (it names the instance: crucible-<job>-<attempt>).
PLACEHOLDER_JOB_ID = "<job-id>"
DEFAULT_MAX_DURATION_S = 86400.0  # the scheduler's default_max_duration_s


def read_settings(path: str) -> dict[str, dict[str, str]]:
    """Per-provider settings from the scheduler's provider_settings_file (JSON {provider: {name: value}})."""
    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"provider settings file {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"provider settings file {path}: must be an object of provider -> object of settings")
    return {str(k): {str(n): str(v) for n, v in values.items()} for k, values in data.items()}


CODE_URL_PLACEHOLDER = "<presigned GET URL of jobs/<job>/code/code.tar.gz, made at launch>"
INPUT_URL_PLACEHOLDER = "<presigned GET URL of the staged input, made at launch>"


def launch_spec(job: job_pb2.Job, attempt: int = 1) -> LaunchSpec:
    """The LaunchSpec the scheduler would pass for the first attempt of `job` (as the engine builds it)."""
    spec = job.spec
    job_id = job.job_id or PLACEHOLDER_JOB_ID
    checkpoint = spec.checkpoint_dir or "checkpoints"
    env = dict(spec.env)
    env.update({"CRUCIBLE_JOB_ID": job_id, "CRUCIBLE_ATTEMPT": str(attempt), "CRUCIBLE_CHECKPOINT_DIR": checkpoint})
    o = job.offer
    max_s = spec.max_duration.ToNanoseconds() / 1e9 if spec.HasField("max_duration") else DEFAULT_MAX_DURATION_S
    return LaunchSpec(
        job_id=job_id,
        attempt=attempt,
        command=tuple(spec.command),
        env=env,
        offer=OfferRef(o.provider, o.instance_type, o.region, o.gpu_name, o.gpu_count, o.spot, o.price_usd_per_hour, o.offer_id),
        work_dir=Path("."),
        code_dir=Path("<job code>") if spec.WhichOneof("code") else None,
        container_image=spec.container_image,
        checkpoint_dir=checkpoint,
        max_duration_s=max_s,
        # made at launch from an s3:// artifact store; a file:// store makes the adapters refuse the code
        code_url=CODE_URL_PLACEHOLDER if spec.WhichOneof("code") else "",
        code_sha256="<SHA-256 of code.tar.gz>" if spec.WhichOneof("code") else "",
        input_urls=tuple((p, INPUT_URL_PLACEHOLDER) for p in input_paths(spec)),
    )


def input_paths(spec: job_pb2.JobSpec) -> list[str]:
    """Where each of the spec's inputs lands (a folder input shows as one entry: its files are listed at launch)."""
    from crucible.scheduler.objects.inputs import default_dest

    return [i.path or default_dest(i.uri) for i in spec.inputs]


def describe(job: job_pb2.Job, settings: Mapping[str, Mapping[str, str]]) -> LaunchPreview:
    """The provider request(s) the first attempt of `job` would make, secrets redacted."""
    name = job.offer.provider or job.provider
    if name in OFFLINE_PROVIDERS:  # no requests and no problems: nothing is sent to a provider
        return LaunchPreview(name, ())
    if name not in ADAPTERS:
        return LaunchPreview(name, (), (f"unknown provider {name!r}",))
    module_name, _, class_name = ADAPTERS[name].partition(":")
    cls: Any = getattr(importlib.import_module(module_name), class_name)
    try:
        provider = cls.from_settings(dict(settings.get(name, {})))
    except ValueError as exc:
        return LaunchPreview(name, (), (f"provider settings: {exc}",))
    describe_launch = getattr(provider, "describe_launch", None)
    if describe_launch is None:
        if provider.capabilities.manual:  # Colab: the scheduler writes a notebook the user runs; nothing is sent
            return LaunchPreview(name, ())
        return LaunchPreview(name, (), (f"{name} does not preview its launch request",))
    shown = describe_launch(launch_spec(job))
    return dataclasses.replace(shown, requests=tuple(_redacted(r) for r in shown.requests))


#: Headers that carry a credential in a launch request; the preview shows them as `***` whether the key is set or not.
CREDENTIAL_HEADERS = frozenset({"authorization", "token", "api-key", "x-api-key", "proxy-authorization"})


def _redacted(request: Mapping[str, Any]) -> dict[str, Any]:
    """The request with every credential header as `***` (`Bearer ***` keeps its scheme): a preview never depends on,
    or shows, whether a key is configured where it was built."""
    headers = dict(request.get("headers") or {})
    for key, value in headers.items():
        if key.lower() in CREDENTIAL_HEADERS:
            scheme, sep, _rest = str(value).partition(" ")
            headers[key] = f"{scheme} {REDACTED}" if sep and scheme.isalpha() else REDACTED
    return {**request, "headers": headers}
