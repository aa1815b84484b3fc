"""Lambda Cloud adapter: on-demand VMs via its REST API (launch, get, terminate); the command runs from cloud-init user data.

Lambda has no log API and no exit status: with an SSH key configured, both are read from the run folder over SSH.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from crucible.scheduler.providers import remote
from crucible.scheduler.providers.base import LaunchSpec
from crucible.scheduler.providers.base import LogChunk
from crucible.scheduler.providers.base import ProviderCapabilities
from crucible.scheduler.providers.base import ProviderError
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.base import RunHandle
from crucible.scheduler.providers.base import RunState
from crucible.scheduler.providers.base import RunStatus
from crucible.scheduler.providers.http import HTTPProvider
from crucible.scheduler.providers.http import LaunchPreview
from crucible.scheduler.providers.http import body_message
from crucible.scheduler.providers.http import kind_for_status
from crucible.scheduler.providers.http import need

log = logging.getLogger(__name__)

LAUNCH_PATH = "/instance-operations/launch"
USER_DATA_LIMIT = 1 << 20  # Lambda accepts cloud-init user data up to 1 MB


class LambdaProvider(HTTPProvider):
    """Lambda Cloud on-demand instances (no spot). Settings: base_url, ssh_key_names (required to launch: the SSH key
    name registered at Lambda), file_system_names, ssh_key_path/ssh_user/ssh_command (outcome and logs over SSH),
    remote_root, timeout_s, max_retries, retry_base_s."""

    name = "lambda"
    default_base_url = "https://cloud.lambda.ai/api/v1"
    capabilities = ProviderCapabilities(spot=False, live_logs=False, artifacts=False)

    def __init__(self, settings: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.ssh_key_names = [n.strip() for n in self.settings.str("ssh_key_names").split(",") if n.strip()]
        self.file_system_names = [n.strip() for n in self.settings.str("file_system_names").split(",") if n.strip()]
        self.remote_root = self.settings.str("remote_root", remote.DEFAULT_REMOTE_ROOT)
        self.use_docker = self.settings.bool("use_docker", True)
        self.probe = remote.probe_from_settings(self.settings, "ubuntu")
        if self.probe is not None:  # logs exist only when they can be read over SSH
            self.capabilities = ProviderCapabilities(spot=False, live_logs=True, artifacts=False)

    @staticmethod
    def map_error(status: int, body: Any, text: str) -> tuple[K, str]:
        """Lambda errors are {"error": {"code", "message", "suggestion"}}; the code decides the kind."""
        error = body.get("error") if isinstance(body, Mapping) else None
        code = str(error.get("code", "")) if isinstance(error, Mapping) else ""
        message = body_message(body) or text[:300]
        if isinstance(error, Mapping) and error.get("suggestion"):
            message += f" ({error['suggestion']})"
        if "insufficient-capacity" in code:
            kind = K.CAPACITY
        elif "quota-exceeded" in code or "account-inactive" in code:
            kind = K.QUOTA
        elif "invalid-api-key" in code or "unauthorized" in code or "forbidden" in code:
            kind = K.AUTH
        elif "object-does-not-exist" in code or "not-found" in code:
            kind = K.NOT_FOUND
        elif "invalid-parameters" in code or "invalid" in code:
            kind = K.INVALID
        else:
            kind = kind_for_status(status)
        return kind, f"{code}: {message}" if code else message

    def _launch_plan(self, spec: LaunchSpec) -> tuple[dict[str, Any], list[str]]:
        """The body of POST /instance-operations/launch for `spec`, and what Lambda would refuse in it (checked here).

        Fields and limits from Lambda's API reference (LaunchInstanceRequest): region_name, instance_type_name and
        exactly one ssh_key_names are required; at most one file system; name up to 64 characters; user_data up to 1 MB.
        """
        problems: list[str] = []
        name, script = remote.run_name(spec), None
        try:
            name, _folder, script = remote.boot_plan(spec, self.remote_root, docker=self.use_docker)
        except ValueError as exc:
            problems.append(f"lambda {exc}")
        if len(self.ssh_key_names) != 1:
            problems.append("setting lambda.ssh_key_names must name exactly one SSH key registered at Lambda")
        if len(self.file_system_names) > 1:
            problems.append("setting lambda.file_system_names: Lambda attaches at most one file system")
        if not spec.offer.region or not spec.offer.instance_type:
            problems.append("offer needs region and instance_type (e.g. us-east-1, gpu_1x_a10): pick an offer with a region")
        if script is not None and len(script.encode()) > USER_DATA_LIMIT:
            problems.append(f"cloud-init user_data is {len(script.encode())} bytes, over Lambda's {USER_DATA_LIMIT}")
        body = {"region_name": spec.offer.region, "instance_type_name": spec.offer.instance_type,
                "ssh_key_names": self.ssh_key_names, "file_system_names": self.file_system_names, "quantity": 1,
                "name": name, "user_data": script}
        return body, problems

    def describe_launch(self, spec: LaunchSpec) -> LaunchPreview:
        """POST /instance-operations/launch exactly as submit() sends it (the key redacted)."""
        body, problems = self._launch_plan(spec)
        return LaunchPreview(self.name, (self.preview_request("POST", LAUNCH_PATH, body),), tuple(problems))

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """POST /instance-operations/launch with the wrapper as cloud-init user data; adopt by name after an unclear failure."""
        body, problems = self._launch_plan(spec)
        self.refuse(problems)
        name = body["name"]
        data = {"name": name, "run_dir": remote.run_dir(spec, self.remote_root), "region": spec.offer.region}
        try:
            answer = await self.http.request("POST", LAUNCH_PATH, json_body=body, idempotent=False)
        except ProviderError as exc:
            found = await remote.adopt_after_lost_reply(exc, lambda: self._find_by_name(name))
            if found is None:
                raise
            log.warning("lambda: launch of %s answered %s but instance %s exists: adopting it", name, exc.kind.value, found)
            return RunHandle(self.name, found, data)
        ids = need(self.http, answer, "data", "instance_ids")
        if not isinstance(ids, list) or len(ids) != 1 or not isinstance(ids[0], str) or not ids[0]:
            raise self.error(K.MALFORMED_RESPONSE, f"launch answered instance_ids={ids!r}, expected one id")
        return RunHandle(self.name, ids[0], data)

    async def find(self, spec: LaunchSpec) -> RunHandle | None:
        """The live instance named crucible-<job>-<attempt>, if one exists (re-attachment after a crash)."""
        found = await self._find_by_name(remote.run_name(spec))
        if found is None:
            return None
        return RunHandle(self.name, found, {"name": remote.run_name(spec), "region": spec.offer.region,
                                            "run_dir": remote.run_dir(spec, self.remote_root)})

    async def _find_by_name(self, name: str) -> str | None:
        answer = await self.http.request("GET", "/instances")
        instances = answer.get("data") if isinstance(answer, Mapping) else None
        if not isinstance(instances, list):
            raise self.error(K.MALFORMED_RESPONSE, "GET /instances lacks a data list")
        for inst in instances:
            if isinstance(inst, Mapping) and inst.get("name") == name and inst.get("status") not in ("terminated",):
                return str(inst.get("id"))
        return None

    async def _instance(self, handle: RunHandle) -> Mapping[str, Any] | None:
        try:
            answer = await self.http.request("GET", f"/instances/{handle.ref}")
        except ProviderError as exc:
            if exc.kind is K.NOT_FOUND:
                return None
            raise
        inst = need(self.http, answer, "data")
        if not isinstance(inst, Mapping) or not isinstance(inst.get("status"), str):
            raise self.error(K.MALFORMED_RESPONSE, "GET /instances/{id} lacks data.status")
        return inst

    async def status(self, handle: RunHandle) -> RunStatus:
        """GET /instances/{id}: booting -> PROVISIONING, active -> the SSH probe's answer (or RUNNING), gone -> see README."""
        inst = await self._instance(handle)
        cancelled = handle.ref in self._cancelled
        if inst is None:
            if cancelled:
                return RunStatus(RunState.CANCELLED)
            raise self.error(K.NOT_FOUND, f"instance {handle.ref} is unknown to Lambda")
        state = inst["status"]
        if state == "booting":
            return RunStatus(RunState.PROVISIONING, message="booting")
        if state == "active":
            if self.probe is None:
                return RunStatus(RunState.RUNNING, message=remote.NO_PROBE)
            ip = inst.get("ip")
            if not ip:
                return RunStatus(RunState.PROVISIONING, message="active, no ip yet")
            return await self.probe.outcome(str(ip), 22, handle.data.get("run_dir", ""))
        if state == "unhealthy":
            return RunStatus(RunState.UNKNOWN, message="Lambda reports the instance unhealthy")
        if state in ("terminating", "terminated"):
            if cancelled:
                return RunStatus(RunState.CANCELLED, message=state)
            return RunStatus(RunState.PREEMPTED, message=f"instance {state} outside the scheduler (host loss)")
        raise self.error(K.MALFORMED_RESPONSE, f"unknown instance status {state!r}")

    async def cancel(self, handle: RunHandle) -> None:
        """POST /instance-operations/terminate; an instance Lambda no longer knows counts as terminated."""
        self._cancelled.add(handle.ref)
        try:
            await self.http.request("POST", "/instance-operations/terminate", json_body={"instance_ids": [handle.ref]})
        except ProviderError as exc:
            if exc.kind is not K.NOT_FOUND:
                raise

    async def read_logs(self, handle: RunHandle, stream: str, offset: int) -> LogChunk:
        """Log bytes over SSH when ssh_key_path is set (Lambda has no log API); otherwise an empty chunk."""
        if self.probe is None:
            return LogChunk(stream, offset, b"", offset)
        inst = await self._instance(handle)
        ip = str(inst.get("ip") or "") if inst else ""
        return await remote.read_remote_log(self.probe, ip, 22, handle.data.get("run_dir", ""), stream, offset)
