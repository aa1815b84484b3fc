"""Paperspace (DigitalOcean) adapter: machines via its REST API, the command delivered as a run-once startup script.

Submit creates a startup script then a machine started on creation; cancel deletes both. Lists are paginated.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

from crucible.scheduler.providers import remote
from crucible.scheduler.providers.base import (
    LaunchSpec,
    ProviderCapabilities,
    ProviderError,
    ProviderErrorKind,
    RunHandle,
    RunState,
    RunStatus,
)
from crucible.scheduler.providers.http import LaunchPreview, body_message, kind_for_status
from crucible.scheduler.providers.vm import Machine, MachineDown, MachineUp, Phase, VMProvider

log = logging.getLogger(__name__)

_CAPACITY = ("capacity", "out of stock", "not available in", "no machines available", "unavailable in region")
_QUOTA = ("limit", "quota", "billing", "payment", "insufficient funds")

PUBLIC_IP_TYPES = ("dynamic", "static", "none")

_PROVISIONING = {"provisioning": "provisioning", "starting": "starting", "restarting": "restarting", "upgrading": "upgrading"}


class PaperspaceProvider(VMProvider):
    """Paperspace machines. Settings: base_url (default https://api.paperspace.com/v1), template_id (OS template,
    required), disk_size_gb, public_ip_type, cancel_action (delete|stop), page_size, ssh_key_path/ssh_user/ssh_command
    (outcome and logs over SSH), remote_root, use_docker."""

    name = "paperspace"
    default_base_url = "https://api.paperspace.com/v1"
    capabilities = ProviderCapabilities(spot=False, live_logs=False, artifacts=False)
    noun = "machine"
    display_name = "Paperspace"
    launch_verb = "create"
    default_ssh_user = "paperspace"

    def __init__(self, settings: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.template_id = self.settings.str("template_id")
        self.disk_size_gb = self.settings.int("disk_size_gb", 100, minimum=1)
        self.public_ip_type = self.settings.str("public_ip_type", "dynamic")
        self.cancel_action = self.settings.str("cancel_action", "delete")
        if self.cancel_action not in ("delete", "stop"):
            raise ValueError(f"paperspace.cancel_action: must be delete or stop, got {self.cancel_action!r}")
        self.page_size = self.settings.int("page_size", 50, minimum=1)
        self.remote_root = self.settings.str("remote_root", remote.DEFAULT_REMOTE_ROOT)
        self.use_docker = self.settings.bool("use_docker", True)
        self.attach_probe()

    @staticmethod
    def map_error(status: int, body: Any, text: str) -> tuple[ProviderErrorKind, str]:
        """Paperspace errors are {code, message}; 400/409/422 with a capacity or limit message refine the kind."""
        message = body_message(body) or text[:300]
        code = str(body.get("code", "")) if isinstance(body, Mapping) else ""
        low = f"{code} {message}".lower()
        kind = kind_for_status(status)
        if kind is ProviderErrorKind.INVALID or status == 403:
            if any(s in low for s in _CAPACITY):
                kind = ProviderErrorKind.CAPACITY
            elif any(s in low for s in _QUOTA):
                kind = ProviderErrorKind.QUOTA
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
                raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, "GET /machines lacks items")
            for item in items:
                if isinstance(item, Mapping) and (not name or item.get("name") == name):
                    yield item
            if not page.get("hasMore"):
                return
            after = page.get("nextPage")
            if not isinstance(after, str) or not after:
                raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, "GET /machines has hasMore but no nextPage")
        raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, "GET /machines pagination does not end")

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
            problems.append(
                "offer needs instance_type (machineType, e.g. A100-80G) and region (e.g. ny2): pick an offer with a region"
            )
        if self.public_ip_type not in PUBLIC_IP_TYPES:
            problems.append(f"setting paperspace.public_ip_type must be one of {', '.join(PUBLIC_IP_TYPES)}")
        script_body = {"name": name, "script": script, "isRunOnce": True, "isEnabled": True}
        machine_body = {
            "name": name,
            "machineType": spec.offer.instance_type,
            "region": spec.offer.region,
            "diskSize": self.disk_size_gb,
            "templateId": self.template_id,
            "startupScriptId": None,
            "startOnCreate": True,
            "publicIpType": self.public_ip_type,
        }
        return script_body, machine_body, problems

    def describe_launch(self, spec: LaunchSpec) -> LaunchPreview:
        """POST /startup-scripts then POST /machines, as submit() sends them (the key redacted)."""
        script_body, machine_body, problems = self._launch_plan(spec)
        machine_body["startupScriptId"] = "<id answered by POST /startup-scripts>"
        return LaunchPreview(
            self.name,
            (
                self.preview_request("POST", "/startup-scripts", script_body),
                self.preview_request("POST", "/machines", machine_body),
            ),
            tuple(problems),
        )

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """POST /startup-scripts (run once) then POST /machines {..., startupScriptId, startOnCreate: true}."""
        script_body, machine_body, problems = self._launch_plan(spec)
        self.refuse(problems)
        answer = await self.http.request("POST", "/startup-scripts", json_body=script_body, idempotent=False)
        script_id = self._id_of(answer)
        if not script_id:
            raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, "POST /startup-scripts answered no id")
        data = self._handle_data(spec)
        data["startup_script_id"] = script_id
        machine_body["startupScriptId"] = script_id
        return await self.launch_or_adopt(
            machine_body["name"],
            data,
            lambda: self._create_machine(machine_body),
            str,
            on_failure=lambda: self._delete_script(script_id),
        )

    async def _create_machine(self, body: Mapping[str, Any]) -> str:
        """POST /machines; the new machine's id (an answer without one is MALFORMED_RESPONSE, so it is looked up)."""
        answer = await self.http.request("POST", "/machines", json_body=body, idempotent=False)
        machine_id = self._id_of(answer)
        if not machine_id:
            raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, "POST /machines answered no id")
        return machine_id

    def _handle_data(self, spec: LaunchSpec, found: Machine | None = None) -> dict[str, Any]:
        data = {"name": remote.run_name(spec), "run_dir": remote.run_dir(spec, self.remote_root)}
        if found is not None and found.get("startupScriptId"):
            data["startup_script_id"] = str(found["startupScriptId"])
        return data

    def _machines_named(self, name: str) -> AsyncIterator[Machine]:
        return self.list_machines(name)

    def _is_live(self, machine: Machine) -> bool:
        return bool(machine.get("id"))

    async def _delete_script(self, script_id: str) -> None:
        try:
            await self.http.request("DELETE", f"/startup-scripts/{script_id}")
        except ProviderError as exc:
            if exc.kind is not ProviderErrorKind.NOT_FOUND:
                log.warning("paperspace: startup script %s not deleted: %s", script_id, exc)

    async def _fetch(self, ref: str) -> Machine | None:
        """GET /machines/{id}."""
        answer = await self.http.request("GET", f"/machines/{ref}")
        machine = answer.get("data", answer) if isinstance(answer, Mapping) else None
        if not isinstance(machine, Mapping) or not isinstance(machine.get("state"), str):
            raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, "GET /machines/{id} lacks state")
        return machine

    def _phase(self, machine: Machine, handle: RunHandle) -> Phase:
        """provisioning/starting/... -> PROVISIONING, ready/serviceready -> up (the SSH probe), off/stopping -> down."""
        state = machine["state"]
        if state in _PROVISIONING:
            return RunStatus(RunState.PROVISIONING, message=state)
        if state in ("ready", "serviceready"):
            return MachineUp(no_address=RunStatus(RunState.RUNNING, message="ready, no public ip (set public_ip_type)"))
        if state in ("off", "stopping"):
            return MachineDown(state, f"machine {state} outside the scheduler (auto-shutdown or host)")
        raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, f"unknown machine state {state!r}")

    def _ssh_address(self, machine: Machine) -> tuple[str, int]:
        ip = machine.get("publicIp")
        return (str(ip), 22) if ip else ("", 0)

    async def _terminate(self, ref: str) -> None:
        """DELETE /machines/{id}, or PATCH /machines/{id}/stop with cancel_action=stop."""
        if self.cancel_action == "stop":
            await self.http.request("PATCH", f"/machines/{ref}/stop")
        else:
            await self.http.request("DELETE", f"/machines/{ref}")

    async def cancel(self, handle: RunHandle) -> None:
        """Delete (or stop) the machine, then, with cancel_action=delete, its startup script."""
        await super().cancel(handle)
        script_id = handle.data.get("startup_script_id")
        if script_id and self.cancel_action == "delete":
            await self._delete_script(str(script_id))
