"""Unit tests of the shared VM-provider flow (providers/vm.py) with an in-memory adapter: no HTTP, no ssh.

Covers find by name (live machines only), adoption after a lost launch reply, the undo when nothing was launched,
the status mapping of unknown / down / up machines, and cancel of a machine the provider no longer knows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from crucible.scheduler.providers import remote
from crucible.scheduler.providers.base import (
    LaunchSpec,
    OfferRef,
    ProviderError,
    ProviderErrorKind,
    RunHandle,
    RunState,
    RunStatus,
)
from crucible.scheduler.providers.credentials import SecretStore
from crucible.scheduler.providers.vm import Machine, MachineDown, MachineUp, Phase, VMProvider


class MemoryVMProvider(VMProvider):
    """A VM adapter over a dict of machines {id: {"id", "name", "state"}}; `gone_on_terminate` drops them."""

    name = "memoryvm"
    noun = "box"
    display_name = "MemoryVM"

    def __init__(self) -> None:
        super().__init__({}, secrets=SecretStore(env={}))
        self.machines: dict[str, dict[str, Any]] = {}
        self.terminated: list[str] = []
        self.undone: list[str] = []

    async def _machines_named(self, name: str) -> AsyncIterator[Machine]:
        for machine in list(self.machines.values()):
            yield machine

    def _is_live(self, machine: Machine) -> bool:
        return bool(machine["state"] != "gone")

    async def _fetch(self, ref: str) -> Machine | None:
        return self.machines.get(ref)

    def _phase(self, machine: Machine, handle: RunHandle) -> Phase:
        if machine["state"] == "booting":
            return RunStatus(RunState.PROVISIONING, message="booting")
        if machine["state"] == "up":
            return MachineUp(no_address=RunStatus(RunState.PROVISIONING, message="no address"))
        return MachineDown(machine["state"], f"box {machine['state']} outside the scheduler")

    def _ssh_address(self, machine: Machine) -> tuple[str, int]:
        return "", 0

    async def _terminate(self, ref: str) -> None:
        self.terminated.append(ref)
        if ref not in self.machines:
            raise ProviderError(self.name, ProviderErrorKind.NOT_FOUND, f"no box {ref}")
        self.machines[ref]["state"] = "off"

    def _handle_data(self, spec: LaunchSpec, found: Machine | None = None) -> dict[str, Any]:
        return {"name": remote.run_name(spec), "found": found is not None}

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        name = remote.run_name(spec)

        async def create() -> str:
            self.add(name, name, "booting")
            return name

        return await self.launch_or_adopt(name, self._handle_data(spec), create, str)

    def add(self, machine_id: str, name: str, state: str) -> None:
        """A machine the provider has."""
        self.machines[machine_id] = {"id": machine_id, "name": name, "state": state}

    async def undo(self) -> None:
        """Stands in for what an adapter cleans up after a failed launch (Paperspace: the startup script)."""
        self.undone.append("undo")


def launch_spec(job_id: str = "job-1", attempt: int = 1) -> LaunchSpec:
    return LaunchSpec(job_id, attempt, ("true",), {}, OfferRef("memoryvm", "small"), Path("/tmp"))


async def test_find_returns_the_live_machine_of_that_name() -> None:
    provider = MemoryVMProvider()
    name = remote.run_name(launch_spec())
    provider.add("old", name, "gone")
    provider.add("other", "crucible-job-2-1", "up")
    assert await provider.find(launch_spec()) is None
    provider.add("new", name, "up")
    handle = await provider.find(launch_spec())
    assert handle == RunHandle("memoryvm", "new", {"name": name, "found": True})


async def test_lost_reply_adopts_the_machine_and_other_failures_undo_and_raise() -> None:
    provider = MemoryVMProvider()
    name = remote.run_name(launch_spec())

    async def lost_reply() -> Any:
        provider.add("made", name, "booting")
        raise ProviderError(provider.name, ProviderErrorKind.TRANSIENT, "timed out")

    handle = await provider.launch_or_adopt(name, {"name": name}, lost_reply, str, on_failure=provider.undo)
    assert (handle.ref, provider.undone) == ("made", [])

    async def refused() -> Any:
        provider.add("twin", "crucible-job-9-1", "up")
        raise ProviderError(provider.name, ProviderErrorKind.CAPACITY, "no capacity")

    with pytest.raises(ProviderError) as info:  # CAPACITY never hides a launch: no look-up, undo, re-raise
        await provider.launch_or_adopt("crucible-job-9-1", {}, refused, str, on_failure=provider.undo)
    assert info.value.kind is ProviderErrorKind.CAPACITY and provider.undone == ["undo"]

    async def unreadable() -> Any:
        raise ProviderError(provider.name, ProviderErrorKind.MALFORMED_RESPONSE, "not JSON")

    with pytest.raises(ProviderError) as info:  # looked up, nothing of that name: the launch really failed
        await provider.launch_or_adopt("crucible-job-8-1", {}, unreadable, str, on_failure=provider.undo)
    assert info.value.kind is ProviderErrorKind.MALFORMED_RESPONSE and provider.undone == ["undo", "undo"]

    async def answered() -> Any:
        return {"id": "fresh"}

    handle = await provider.launch_or_adopt("crucible-job-7-1", {"k": 1}, answered, lambda answer: answer["id"])
    assert handle == RunHandle("memoryvm", "fresh", {"k": 1})


async def test_status_maps_unknown_down_and_up_machines() -> None:
    provider = MemoryVMProvider()
    provider.add("b1", "crucible-job-1-1", "booting")
    handle = RunHandle("memoryvm", "b1", {"run_dir": "/r"})
    assert (await provider.status(handle)).state is RunState.PROVISIONING
    provider.machines["b1"]["state"] = "up"
    status = await provider.status(handle)  # no probe configured: RUNNING, saying why the outcome is unseen
    assert (status.state, status.message) == (RunState.RUNNING, remote.NO_PROBE)
    provider.machines["b1"]["state"] = "off"
    status = await provider.status(handle)
    assert (status.state, status.message) == (RunState.PREEMPTED, "box off outside the scheduler")
    await provider.cancel(handle)
    assert (await provider.status(handle)) == RunStatus(RunState.CANCELLED, message="off")
    del provider.machines["b1"]
    assert (await provider.status(handle)).state is RunState.CANCELLED
    with pytest.raises(ProviderError) as info:
        await provider.status(RunHandle("memoryvm", "b2", {}))
    assert info.value.kind is ProviderErrorKind.NOT_FOUND
    assert str(info.value) == "memoryvm: not_found: box b2 is unknown to MemoryVM"


async def test_cancel_of_an_unknown_machine_counts_as_terminated_and_logs_need_a_probe() -> None:
    provider = MemoryVMProvider()
    handle = RunHandle("memoryvm", "vanished", {})
    await provider.cancel(handle)
    await provider.cancel(handle)
    assert provider.terminated == ["vanished", "vanished"]
    assert (await provider.status(handle)).state is RunState.CANCELLED
    chunk = await provider.read_logs(handle, "stdout", 7)
    assert (chunk.data, chunk.next_offset) == (b"", 7)
    assert not provider.capabilities.live_logs
    handle = await provider.submit(launch_spec("job-5"))
    assert handle == RunHandle("memoryvm", "crucible-job-5-1", {"name": "crucible-job-5-1", "found": False})
