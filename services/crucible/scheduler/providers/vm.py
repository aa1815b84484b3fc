"""The flow the rented-machine adapters share (Lambda, RunPod, Paperspace): find by name, adopt, status and logs by SSH.

Each adapter keeps only its API: listing and reading its machines, the launch and terminate calls, its state words.
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeAlias

from crucible.scheduler.providers import remote
from crucible.scheduler.providers.base import (
    LaunchSpec,
    LogChunk,
    ProviderError,
    ProviderErrorKind,
    RunHandle,
    RunState,
    RunStatus,
)
from crucible.scheduler.providers.http import HTTPProvider

log = logging.getLogger(__name__)

#: The machine record an adapter reads from its API (an instance, a pod, a machine), as the provider answered it.
Machine: TypeAlias = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class MachineUp:
    """The machine runs: the SSH probe says how the command is doing (RUNNING without a probe)."""

    no_address: RunStatus  # reported while the machine has no reachable SSH address yet


@dataclasses.dataclass(frozen=True)
class MachineDown:
    """The machine is stopped or gone: CANCELLED when this process cancelled it, otherwise PREEMPTED."""

    cancelled_message: str
    preempted_message: str


#: What an adapter's state mapping makes of one machine record: a final answer, or up / down for the shared flow.
Phase: TypeAlias = RunStatus | MachineUp | MachineDown


class VMProvider(HTTPProvider):
    """A provider that rents a machine per attempt, named crucible-<job>-<attempt>, whose outcome is read over SSH.

    Shared here: `find` (the live machine of that name), adoption after a launch whose reply was lost, `status` (the
    adapter's state mapping, then the SSH probe), `cancel` (a machine the provider no longer knows is terminated) and
    `read_logs` over SSH. Subclasses set `noun`, `display_name`, `launch_verb`, `default_ssh_user`, call
    `attach_probe()` at the end of `__init__`, and implement the hooks below with their own API calls.
    """

    noun = "machine"  # what the provider calls a machine, in messages: "instance", "pod", "machine"
    display_name = ""  # the provider's name in messages: "Lambda", "RunPod", "Paperspace"
    launch_verb = "launch of"  # the launch call in the adoption log line: "launch of", "deploy of", "create"
    default_ssh_user = "root"  # the SSH user when setting ssh_user is empty

    def __init__(self, settings: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.probe: remote.SSHProbe | None = None

    def attach_probe(self) -> None:
        """Read the SSH probe's settings (ssh_key_path, ssh_user, ...); with a key, outcome and logs are observable."""
        self.probe = remote.probe_from_settings(self.settings, self.default_ssh_user)
        if self.probe is not None:  # logs exist only when they can be read over SSH
            self.capabilities = dataclasses.replace(self.capabilities, live_logs=True)

    # --- what each adapter implements with its own API -------------------------------------------------------------

    @abc.abstractmethod
    def _machines_named(self, name: str) -> AsyncIterator[Machine]:
        """The account's machines, as listed by the provider (it may filter them by `name` itself)."""

    @abc.abstractmethod
    def _is_live(self, machine: Machine) -> bool:
        """Whether a listed machine still counts (not terminated) when looking one up by name."""

    @abc.abstractmethod
    async def _fetch(self, ref: str) -> Machine | None:
        """The machine `ref` from the provider's API; None (or a NOT_FOUND ProviderError) when it is unknown."""

    @abc.abstractmethod
    def _phase(self, machine: Machine, handle: RunHandle) -> Phase:
        """The adapter's state mapping of one machine record (MALFORMED_RESPONSE for a state it does not know)."""

    @abc.abstractmethod
    def _ssh_address(self, machine: Machine) -> tuple[str, int]:
        """(host, port) the SSH probe reaches the machine at, or ("", 0) while it has none."""

    @abc.abstractmethod
    async def _terminate(self, ref: str) -> None:
        """The provider call that stops the machine and releases it."""

    @abc.abstractmethod
    def _handle_data(self, spec: LaunchSpec, found: Machine | None = None) -> dict[str, Any]:
        """The handle's data of an attempt (name, run_dir, ...); `found` is the listed machine when re-attaching."""

    # --- the shared flow -------------------------------------------------------------------------------------------

    @staticmethod
    def machine_id(machine: Machine) -> str:
        """The id of a listed machine."""
        return str(machine.get("id"))

    async def _find_by_name(self, name: str) -> Machine | None:
        """The first live machine named `name`, or None."""
        async for machine in self._machines_named(name):
            if machine.get("name") == name and self._is_live(machine):
                return machine
        return None

    async def find(self, spec: LaunchSpec) -> RunHandle | None:
        """The live machine named crucible-<job>-<attempt>, if one exists (re-attachment after a crash)."""
        machine = await self._find_by_name(remote.run_name(spec))
        if machine is None:
            return None
        return RunHandle(self.name, self.machine_id(machine), self._handle_data(spec, machine))

    async def launch_or_adopt(
        self,
        name: str,
        data: Mapping[str, Any],
        send: Callable[[], Awaitable[Any]],
        read_id: Callable[[Any], str],
        *,
        on_failure: Callable[[], Awaitable[None]] | None = None,
    ) -> RunHandle:
        """Send the launch call and return the handle of the machine `read_id` finds in its answer.

        Only a lost or unreadable reply (TRANSIENT, MALFORMED_RESPONSE) can hide a launch that happened; then the
        machine named `name` is looked up and adopted rather than launched twice. Otherwise `on_failure` runs (undoing
        what the adapter made before the launch call) and the error is re-raised.
        """
        try:
            answer = await send()
        except ProviderError as exc:
            found: Machine | None = None
            if exc.kind in (ProviderErrorKind.TRANSIENT, ProviderErrorKind.MALFORMED_RESPONSE):
                try:
                    found = await self._find_by_name(name)
                except ProviderError:
                    found = None
            if found is None:
                if on_failure is not None:
                    await on_failure()
                raise
            found_id = self.machine_id(found)
            log.warning(
                "%s: %s %s answered %s but %s %s exists: adopting it",
                self.name,
                self.launch_verb,
                name,
                exc.kind.value,
                self.noun,
                found_id,
            )
            return RunHandle(self.name, found_id, data)
        return RunHandle(self.name, read_id(answer), data)

    async def _machine(self, handle: RunHandle) -> Machine | None:
        """The handle's machine, or None when the provider no longer knows it."""
        try:
            return await self._fetch(handle.ref)
        except ProviderError as exc:
            if exc.kind is ProviderErrorKind.NOT_FOUND:
                return None
            raise

    async def status(self, handle: RunHandle) -> RunStatus:
        """The adapter's state mapping; a machine that is up is asked over SSH (or is RUNNING without a probe)."""
        machine = await self._machine(handle)
        cancelled = handle.ref in self._cancelled
        if machine is None:
            if cancelled:
                return RunStatus(RunState.CANCELLED)
            raise self.error(ProviderErrorKind.NOT_FOUND, f"{self.noun} {handle.ref} is unknown to {self.display_name}")
        phase = self._phase(machine, handle)
        if isinstance(phase, RunStatus):
            return phase
        if isinstance(phase, MachineDown):
            if cancelled:
                return RunStatus(RunState.CANCELLED, message=phase.cancelled_message)
            return RunStatus(RunState.PREEMPTED, message=phase.preempted_message)
        if self.probe is None:
            return RunStatus(RunState.RUNNING, message=remote.NO_PROBE)
        host, port = self._ssh_address(machine)
        if not host:
            return phase.no_address
        return await self.probe.outcome(host, port, handle.data.get("run_dir", ""))

    async def cancel(self, handle: RunHandle) -> None:
        """Terminate the machine; one the provider no longer knows counts as terminated."""
        self._cancelled.add(handle.ref)
        try:
            await self._terminate(handle.ref)
        except ProviderError as exc:
            if exc.kind is not ProviderErrorKind.NOT_FOUND:
                raise

    async def read_logs(self, handle: RunHandle, stream: str, offset: int) -> LogChunk:
        """Log bytes over SSH when ssh_key_path is set (these providers have no log API); otherwise an empty chunk."""
        if self.probe is None:
            return LogChunk(stream, offset, b"", offset)
        machine = await self._machine(handle)
        host, port = self._ssh_address(machine) if machine else ("", 0)
        return await remote.read_remote_log(self.probe, host, port, handle.data.get("run_dir", ""), stream, offset)
