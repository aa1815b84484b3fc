"""Lambda Cloud adapter: on-demand VMs via its REST API (launch, get, terminate), the command run from cloud-init.

Lambda has no log API and no exit status: with an SSH key configured, both are read from the run folder over SSH.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from crucible.scheduler.providers import remote
from crucible.scheduler.providers.base import LaunchSpec, ProviderCapabilities, ProviderErrorKind, RunHandle, RunState, RunStatus
from crucible.scheduler.providers.http import LaunchPreview, body_message, kind_for_status, need
from crucible.scheduler.providers.vm import Machine, MachineDown, MachineUp, Phase, VMProvider

LAUNCH_PATH = "/instance-operations/launch"
USER_DATA_LIMIT = 1 << 20  # Lambda accepts cloud-init user data up to 1 MB


class LambdaProvider(VMProvider):
    """Lambda Cloud on-demand instances (no spot). Settings: base_url, ssh_key_names (required to launch: the SSH key
    name registered at Lambda), file_system_names, ssh_key_path/ssh_user/ssh_command (outcome and logs over SSH),
    remote_root, timeout_s, max_retries, retry_base_s."""

    name = "lambda"
    default_base_url = "https://cloud.lambda.ai/api/v1"
    capabilities = ProviderCapabilities(spot=False, live_logs=False, artifacts=False)
    noun = "instance"
    display_name = "Lambda"
    launch_verb = "launch of"
    default_ssh_user = "ubuntu"

    def __init__(self, settings: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.ssh_key_names = [n.strip() for n in self.settings.str("ssh_key_names").split(",") if n.strip()]
        self.file_system_names = [n.strip() for n in self.settings.str("file_system_names").split(",") if n.strip()]
        self.remote_root = self.settings.str("remote_root", remote.DEFAULT_REMOTE_ROOT)
        self.use_docker = self.settings.bool("use_docker", True)
        self.attach_probe()

    @staticmethod
    def map_error(status: int, body: Any, text: str) -> tuple[ProviderErrorKind, str]:
        """Lambda errors are {"error": {"code", "message", "suggestion"}}; the code decides the kind."""
        error = body.get("error") if isinstance(body, Mapping) else None
        code = str(error.get("code", "")) if isinstance(error, Mapping) else ""
        message = body_message(body) or text[:300]
        if isinstance(error, Mapping) and error.get("suggestion"):
            message += f" ({error['suggestion']})"
        if "insufficient-capacity" in code:
            kind = ProviderErrorKind.CAPACITY
        elif "quota-exceeded" in code or "account-inactive" in code:
            kind = ProviderErrorKind.QUOTA
        elif "invalid-api-key" in code or "unauthorized" in code or "forbidden" in code:
            kind = ProviderErrorKind.AUTH
        elif "object-does-not-exist" in code or "not-found" in code:
            kind = ProviderErrorKind.NOT_FOUND
        elif "invalid-parameters" in code or "invalid" in code:
            kind = ProviderErrorKind.INVALID
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
        body = {
            "region_name": spec.offer.region,
            "instance_type_name": spec.offer.instance_type,
            "ssh_key_names": self.ssh_key_names,
            "file_system_names": self.file_system_names,
            "quantity": 1,
            "name": name,
            "user_data": script,
        }
        return body, problems

    def describe_launch(self, spec: LaunchSpec) -> LaunchPreview:
        """POST /instance-operations/launch exactly as submit() sends it (the key redacted)."""
        body, problems = self._launch_plan(spec)
        return LaunchPreview(self.name, (self.preview_request("POST", LAUNCH_PATH, body),), tuple(problems))

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """POST /instance-operations/launch with the wrapper as cloud-init user data; adopt by name after an unclear
        failure."""
        body, problems = self._launch_plan(spec)
        self.refuse(problems)
        return await self.launch_or_adopt(
            body["name"],
            self._handle_data(spec),
            lambda: self.http.request("POST", LAUNCH_PATH, json_body=body, idempotent=False),
            self._launched_id,
        )

    def _launched_id(self, answer: Any) -> str:
        ids = need(self.http, answer, "data", "instance_ids")
        if not isinstance(ids, list) or len(ids) != 1 or not isinstance(ids[0], str) or not ids[0]:
            raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, f"launch answered instance_ids={ids!r}, expected one id")
        return ids[0]

    def _handle_data(self, spec: LaunchSpec, found: Machine | None = None) -> dict[str, Any]:
        return {"name": remote.run_name(spec), "run_dir": remote.run_dir(spec, self.remote_root), "region": spec.offer.region}

    async def _machines_named(self, name: str) -> AsyncIterator[Machine]:
        """GET /instances (every instance of the account; Lambda cannot filter by name)."""
        answer = await self.http.request("GET", "/instances")
        instances = answer.get("data") if isinstance(answer, Mapping) else None
        if not isinstance(instances, list):
            raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, "GET /instances lacks a data list")
        for instance in instances:
            if isinstance(instance, Mapping):
                yield instance

    def _is_live(self, machine: Machine) -> bool:
        return machine.get("status") not in ("terminated",)

    async def _fetch(self, ref: str) -> Machine | None:
        """GET /instances/{id}."""
        answer = await self.http.request("GET", f"/instances/{ref}")
        instance = need(self.http, answer, "data")
        if not isinstance(instance, Mapping) or not isinstance(instance.get("status"), str):
            raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, "GET /instances/{id} lacks data.status")
        return instance

    def _phase(self, machine: Machine, handle: RunHandle) -> Phase:
        """booting -> PROVISIONING, active -> up (SSH probe), unhealthy -> UNKNOWN, terminating/terminated -> down."""
        state = machine["status"]
        if state == "booting":
            return RunStatus(RunState.PROVISIONING, message="booting")
        if state == "active":
            return MachineUp(no_address=RunStatus(RunState.PROVISIONING, message="active, no ip yet"))
        if state == "unhealthy":
            return RunStatus(RunState.UNKNOWN, message="Lambda reports the instance unhealthy")
        if state in ("terminating", "terminated"):
            return MachineDown(state, f"instance {state} outside the scheduler (host loss)")
        raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, f"unknown instance status {state!r}")

    def _ssh_address(self, machine: Machine) -> tuple[str, int]:
        ip = machine.get("ip")
        return (str(ip), 22) if ip else ("", 0)

    async def _terminate(self, ref: str) -> None:
        """POST /instance-operations/terminate."""
        await self.http.request("POST", "/instance-operations/terminate", json_body={"instance_ids": [ref]})
