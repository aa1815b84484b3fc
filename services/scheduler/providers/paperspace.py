"""Paperspace (DigitalOcean) adapter: machines via its REST API, the command delivered as a run-once startup script.

Submit creates a startup script then a machine started on creation; cancel deletes both. Lists are paginated.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
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

log = logging.getLogger(__name__)

_CAPACITY = ("capacity", "out of stock", "not available in", "no machines available", "unavailable in region")
_QUOTA = ("limit", "quota", "billing", "payment", "insufficient funds")

PUBLIC_IP_TYPES = ("dynamic", "static", "none")

_PROVISIONING = {"provisioning": "provisioning", "starting": "starting", "restarting": "restarting",
                 "upgrading": "upgrading"}


class PaperspaceProvider(HTTPProvider):
    """Paperspace machines. Settings: base_url (default https://api.paperspace.com/v1), template_id (OS template,
    required), disk_size_gb, public_ip_type, cancel_action (delete|stop), page_size, ssh_key_path/ssh_user/ssh_command
    (outcome and logs over SSH), remote_root, use_docker."""

    name = "paperspace"
    default_base_url = "https://api.paperspace.com/v1"
    capabilities = ProviderCapabilities(spot=False, live_logs=False, artifacts=False)

    def __init__(self, settings: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        s = self.settings
        self.template_id = s.str("template_id")
        self.disk_size_gb = s.int("disk_size_gb", 100, minimum=1)
        self.public_ip_type = s.str("public_ip_type", "dynamic")
        self.cancel_action = s.str("cancel_action", "delete")
        if self.cancel_action not in ("delete", "stop"):
            raise ValueError(f"paperspace.cancel_action: must be delete or stop, got {self.cancel_action!r}")
        self.page_size = s.int("page_size", 50, minimum=1)
        self.remote_root = s.str("remote_root", remote.DEFAULT_REMOTE_ROOT)
        self.use_docker = s.bool("use_docker", True)
        self.probe = remote.probe_from_settings(s, "paperspace")
        if self.probe is not None:
            self.capabilities = ProviderCapabilities(spot=False, live_logs=True, artifacts=False)

    @staticmethod
    def map_error(status: int, body: Any, text: str) -> tuple[K, str]:
        """Paperspace errors are {code, message}; 400/409/422 with a capacity or limit message refine the kind."""
        message = body_message(body) or text[:300]
        code = str(body.get("code", "")) if isinstance(body, Mapping) else ""
        low = f"{code} {message}".lower()
        kind = kind_for_status(status)
        if kind is K.INVALID or status == 403:
            if any(s in low for s in _CAPACITY):
                kind = K.CAPACITY
            elif any(s in low for s in _QUOTA):
                kind = K.QUOTA
        return kind, f"{code}: {message}" if code else message

    async def list_machines(self, name: str = "") -> AsyncIterator[Mapping[str, Any]]:
        """Every machine of the account (following hasMore/nextPage with after=), optionally filtered by name."""
        after: str | None = None
        for _ in range(10_000):
            params: dict[str, Any] = {"limit": self.page_size}
            if name:
                params["name"] = name
            if after:
                params["after"] = after
            page = await self.http.request("GET", "/machines", params=params)
            items = page.get("items") if isinstance(page, Mapping) else None
            if not isinstance(items, list):
                raise self.error(K.MALFORMED_RESPONSE, "GET /machines lacks items")
            for item in items:
                if isinstance(item, Mapping) and (not name or item.get("name") == name):
                    yield item
            if not page.get("hasMore"):
                return
            after = page.get("nextPage")
            if not isinstance(after, str) or not after:
                raise self.error(K.MALFORMED_RESPONSE, "GET /machines has hasMore but no nextPage")
        raise self.error(K.MALFORMED_RESPONSE, "GET /machines pagination does not end")

    @staticmethod
    def _id_of(answer: Any) -> str:
        obj = answer.get("data", answer) if isinstance(answer, Mapping) else None
        ident = obj.get("id") if isinstance(obj, Mapping) else None
        return ident if isinstance(ident, str) and ident else ""

    def _launch_plan(self, spec: LaunchSpec) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
        """The bodies of POST /startup-scripts and POST /machines for `spec`, and what Paperspace would refuse in them.

        Fields from Paperspace's machines API (`pspace machine create`): name, machineType, templateId, region and
        diskSize are required; startupScriptId, startOnCreate and publicIpType are optional. startupScriptId is filled
        in with the id the first call returns.
        """
        problems: list[str] = []
        name, script = remote.run_name(spec), None
        try:
            name, _folder, script = remote.boot_plan(spec, self.remote_root, docker=self.use_docker)
        except ValueError as exc:
            problems.append(f"paperspace {exc}")
        if not self.template_id:
            problems.append("setting paperspace.template_id is required (the OS template of the machine)")
        if not spec.offer.instance_type or not spec.offer.region:
            problems.append("offer needs instance_type (machineType, e.g. A100-80G) and region (e.g. ny2): "
                            "pick an offer with a region")
        if self.public_ip_type not in PUBLIC_IP_TYPES:
            problems.append(f"setting paperspace.public_ip_type must be one of {', '.join(PUBLIC_IP_TYPES)}")
        script_body = {"name": name, "script": script, "isRunOnce": True, "isEnabled": True}
        machine_body = {"name": name, "machineType": spec.offer.instance_type, "region": spec.offer.region,
                        "diskSize": self.disk_size_gb, "templateId": self.template_id, "startupScriptId": None,
                        "startOnCreate": True, "publicIpType": self.public_ip_type}
        return script_body, machine_body, problems

    def describe_launch(self, spec: LaunchSpec) -> LaunchPreview:
        """POST /startup-scripts then POST /machines, as submit() sends them (the key redacted)."""
        script_body, machine_body, problems = self._launch_plan(spec)
        machine_body["startupScriptId"] = "<id answered by POST /startup-scripts>"
        return LaunchPreview(self.name, (self.preview_request("POST", "/startup-scripts", script_body),
                                         self.preview_request("POST", "/machines", machine_body)), tuple(problems))

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """POST /startup-scripts (run once) then POST /machines {..., startupScriptId, startOnCreate: true}."""
        script_body, body, problems = self._launch_plan(spec)
        self.refuse(problems)
        name = body["name"]
        answer = await self.http.request("POST", "/startup-scripts", json_body=script_body, idempotent=False)
        script_id = self._id_of(answer)
        if not script_id:
            raise self.error(K.MALFORMED_RESPONSE, "POST /startup-scripts answered no id")
        data = {"name": name, "run_dir": remote.run_dir(spec, self.remote_root), "startup_script_id": script_id}
        body["startupScriptId"] = script_id
        try:
            answer = await self.http.request("POST", "/machines", json_body=body, idempotent=False)
            machine_id = self._id_of(answer)
            if not machine_id:
                raise self.error(K.MALFORMED_RESPONSE, "POST /machines answered no id")
        except ProviderError as exc:
            found = await remote.adopt_after_lost_reply(exc, lambda: self._find_by_name(name))
            if found is not None:
                log.warning("paperspace: create %s answered %s but machine %s exists: adopting it", name,
                            exc.kind.value, found["id"])
                return RunHandle(self.name, str(found["id"]), data)
            await self._delete_script(script_id)
            raise
        return RunHandle(self.name, machine_id, data)

    async def find(self, spec: LaunchSpec) -> RunHandle | None:
        """The machine named crucible-<job>-<attempt>, if any (re-attachment after a crash)."""
        machine = await self._find_by_name(remote.run_name(spec))
        if machine is None:
            return None
        data = {"name": remote.run_name(spec), "run_dir": remote.run_dir(spec, self.remote_root)}
        if machine.get("startupScriptId"):
            data["startup_script_id"] = str(machine["startupScriptId"])
        return RunHandle(self.name, str(machine["id"]), data)

    async def _find_by_name(self, name: str) -> Mapping[str, Any] | None:
        async for machine in self.list_machines(name):
            if machine.get("id"):
                return machine
        return None

    async def _delete_script(self, script_id: str) -> None:
        try:
            await self.http.request("DELETE", f"/startup-scripts/{script_id}")
        except ProviderError as exc:
            if exc.kind is not K.NOT_FOUND:
                log.warning("paperspace: startup script %s not deleted: %s", script_id, exc)

    async def _machine(self, handle: RunHandle) -> Mapping[str, Any] | None:
        try:
            answer = await self.http.request("GET", f"/machines/{handle.ref}")
        except ProviderError as exc:
            if exc.kind is K.NOT_FOUND:
                return None
            raise
        machine = answer.get("data", answer) if isinstance(answer, Mapping) else None
        if not isinstance(machine, Mapping) or not isinstance(machine.get("state"), str):
            raise self.error(K.MALFORMED_RESPONSE, "GET /machines/{id} lacks state")
        return machine

    async def status(self, handle: RunHandle) -> RunStatus:
        """GET /machines/{id}: provisioning/starting -> PROVISIONING, ready -> SSH probe (or RUNNING), off -> see README."""
        machine = await self._machine(handle)
        cancelled = handle.ref in self._cancelled
        if machine is None:
            if cancelled:
                return RunStatus(RunState.CANCELLED)
            raise self.error(K.NOT_FOUND, f"machine {handle.ref} is unknown to Paperspace")
        state = machine["state"]
        if state in _PROVISIONING:
            return RunStatus(RunState.PROVISIONING, message=state)
        if state in ("ready", "serviceready"):
            if self.probe is None:
                return RunStatus(RunState.RUNNING, message=remote.NO_PROBE)
            ip = machine.get("publicIp")
            if not ip:
                return RunStatus(RunState.RUNNING, message="ready, no public ip (set public_ip_type)")
            return await self.probe.outcome(str(ip), 22, handle.data.get("run_dir", ""))
        if state in ("off", "stopping"):
            if cancelled:
                return RunStatus(RunState.CANCELLED, message=state)
            return RunStatus(RunState.PREEMPTED, message=f"machine {state} outside the scheduler (auto-shutdown or host)")
        raise self.error(K.MALFORMED_RESPONSE, f"unknown machine state {state!r}")

    async def cancel(self, handle: RunHandle) -> None:
        """DELETE /machines/{id} (or PATCH .../stop with cancel_action=stop), then delete the startup script."""
        self._cancelled.add(handle.ref)
        try:
            if self.cancel_action == "stop":
                await self.http.request("PATCH", f"/machines/{handle.ref}/stop")
            else:
                await self.http.request("DELETE", f"/machines/{handle.ref}")
        except ProviderError as exc:
            if exc.kind is not K.NOT_FOUND:
                raise
        script_id = handle.data.get("startup_script_id")
        if script_id and self.cancel_action == "delete":
            await self._delete_script(str(script_id))

    async def read_logs(self, handle: RunHandle, stream: str, offset: int) -> LogChunk:
        """Log bytes over SSH when ssh_key_path is set (Paperspace has no log API for machines); otherwise empty."""
        if self.probe is None:
            return LogChunk(stream, offset, b"", offset)
        machine = await self._machine(handle)
        ip = str(machine.get("publicIp") or "") if machine else ""
        return await remote.read_remote_log(self.probe, ip, 22, handle.data.get("run_dir", ""), stream, offset)
