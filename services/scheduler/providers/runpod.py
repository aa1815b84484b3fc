"""RunPod adapter: GPU pods via its GraphQL API (on-demand or spot with a bid), status polling and termination.

The job command runs as the container's start command (dockerArgs) under the wrapper; errors arrive in HTTP 200 bodies.
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
from crucible.scheduler.providers.http import kind_for_status
from crucible.scheduler.providers.http import need

log = logging.getLogger(__name__)

_POD_FIELDS = "id name desiredStatus costPerHr lastStatusChange"
DEPLOY = ("mutation Deploy($input: PodFindAndDeployOnDemandInput) { podFindAndDeployOnDemand(input: $input) { "
          + _POD_FIELDS + " } }")
DEPLOY_SPOT = ("mutation DeploySpot($input: PodRentInterruptableInput!) { podRentInterruptable(input: $input) { "
               + _POD_FIELDS + " } }")
POD = ("query Pod($input: PodFilter!) { pod(input: $input) { " + _POD_FIELDS + " uptimeSeconds runtime { uptimeInSeconds "
       "ports { ip isIpPublic privatePort publicPort type } } } }")
MY_PODS = "query MyPods { myself { pods { id name desiredStatus } } }"
TERMINATE = "mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }"

_CAPACITY = ("no longer any instances available", "not enough free gpus", "no instances available",
             "there are no available", "could not find any pods", "out of stock", "no gpus available")
_QUOTA = ("balance", "insufficient funds", "spend limit", "quota", "not enough credit", "too many pods")
_AUTH = ("unauthorized", "unauthenticated", "api key", "not authenticated", "permission denied", "forbidden")
_TRANSIENT = ("something went wrong", "internal server error", "timeout", "temporarily")
_NOT_FOUND = ("pod not found", "does not exist", "could not find pod")


def classify(messages: list[str], codes: list[str]) -> K:
    """The kind of a RunPod GraphQL error from its messages and extension codes (capacity checked first)."""
    text = " ".join(messages).lower()
    if any(s in text for s in _CAPACITY):
        return K.CAPACITY
    if any(s in text for s in _QUOTA):
        return K.QUOTA
    if any(s in text for s in _AUTH) or "UNAUTHENTICATED" in codes or "FORBIDDEN" in codes:
        return K.AUTH
    if any(s in text for s in _NOT_FOUND):
        return K.NOT_FOUND
    if any(s in text for s in _TRANSIENT) or "INTERNAL_SERVER_ERROR" in codes:
        return K.TRANSIENT
    return K.INVALID


def graphql_error_kind(errors: list[Mapping[str, Any]]) -> K:
    """classify() over a GraphQL `errors` array."""
    messages = [str(e.get("message", "")) for e in errors]
    codes = [str(e.get("extensions", {}).get("code", "")) for e in errors if isinstance(e.get("extensions"), Mapping)]
    return classify(messages, codes)


class RunPodProvider(HTTPProvider):
    """RunPod pods. Settings: base_url (default https://api.runpod.io), graphql_path, cloud_type (ALL|SECURE|COMMUNITY),
    image (default container image), container_disk_gb, volume_gb, volume_mount_path, bid_factor (spot bid = offer price
    per GPU x factor), ssh_key_path/ssh_user/ssh_command (outcome and logs over SSH), remote_root."""

    name = "runpod"
    default_base_url = "https://api.runpod.io"
    capabilities = ProviderCapabilities(spot=True, live_logs=False, artifacts=False)

    def __init__(self, settings: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        s = self.settings
        self.graphql_path = s.str("graphql_path", "/graphql")
        self.cloud_type = s.str("cloud_type", "ALL").upper()
        if self.cloud_type not in ("ALL", "SECURE", "COMMUNITY"):
            raise ValueError(f"runpod.cloud_type: must be ALL, SECURE or COMMUNITY, got {self.cloud_type!r}")
        self.image = s.str("image", "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04")
        self.container_disk_gb = s.int("container_disk_gb", 40, minimum=1)
        self.volume_gb = s.int("volume_gb", 20)
        self.volume_mount_path = s.str("volume_mount_path", "/workspace")
        self.bid_factor = s.float("bid_factor", 1.0, minimum=0.01)
        self.remote_root = s.str("remote_root", self.volume_mount_path.rstrip("/") + "/crucible")
        self.probe = remote.probe_from_settings(s, "root")
        if self.probe is not None:
            self.capabilities = ProviderCapabilities(spot=True, live_logs=True, artifacts=False)

    @staticmethod
    def map_error(status: int, body: Any, text: str) -> tuple[K, str]:
        """Non-200 answers: GraphQL validation errors (400) carry `errors`; 401/403 are AUTH."""
        errors = body.get("errors") if isinstance(body, Mapping) else None
        if isinstance(errors, list) and errors and all(isinstance(e, Mapping) for e in errors):
            message = "; ".join(str(e.get("message", "")) for e in errors)
            kind = kind_for_status(status) if status in (401, 403, 429) or status >= 500 else graphql_error_kind(errors)
            return kind, message
        return kind_for_status(status), text[:300]

    async def _gql(self, query: str, variables: Mapping[str, Any], *, idempotent: bool = True) -> Mapping[str, Any]:
        return await self.http.graphql(self.graphql_path, query, variables, idempotent=idempotent,
                                       error_kind=graphql_error_kind)

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """podFindAndDeployOnDemand (or podRentInterruptable with bidPerGpu when the offer is spot)."""
        if spec.code_dir is not None:
            raise self.error(K.INVALID, "runpod cannot ship code_dir: bake the code into container_image or fetch it "
                                        "in the command")
        gpu_type = spec.offer.instance_type or spec.offer.gpu_name
        if not gpu_type:
            raise self.error(K.INVALID, "offer needs instance_type (a RunPod gpuTypeId such as 'NVIDIA A40')")
        name = remote.run_name(spec)
        folder = remote.run_dir(spec, self.remote_root)
        try:
            env = remote.job_env(spec)
            args = remote.container_args(remote.wrapper_script(spec, folder, export_env=False))
        except ValueError as exc:
            raise self.error(K.INVALID, str(exc)) from None
        gpu_count = max(1, spec.offer.gpu_count)
        inp: dict[str, Any] = {
            "name": name, "imageName": spec.container_image or self.image, "gpuTypeId": gpu_type,
            "cloudType": self.cloud_type, "gpuCount": gpu_count, "volumeInGb": self.volume_gb,
            "containerDiskInGb": self.container_disk_gb, "volumeMountPath": self.volume_mount_path,
            "env": [{"key": k, "value": v} for k, v in sorted(env.items())], "dockerArgs": args,
            "ports": "22/tcp", "supportPublicIp": True}
        if spec.offer.region:
            inp["dataCenterId"] = spec.offer.region
        if spec.offer.spot:
            if spec.offer.price_usd_per_hour <= 0:
                raise self.error(K.INVALID, "a spot offer needs price_usd_per_hour to derive bidPerGpu")
            inp["bidPerGpu"] = round(spec.offer.price_usd_per_hour / gpu_count * self.bid_factor, 4)
            query, field = DEPLOY_SPOT, "podRentInterruptable"
        else:
            query, field = DEPLOY, "podFindAndDeployOnDemand"
        data = {"name": name, "run_dir": folder, "spot": spec.offer.spot}
        try:
            answer = await self._gql(query, {"input": inp}, idempotent=False)
        except ProviderError as exc:
            found = await remote.adopt_after_lost_reply(exc, lambda: self._find_by_name(name))
            if found is None:
                raise
            log.warning("runpod: deploy of %s answered %s but pod %s exists: adopting it", name, exc.kind.value, found)
            return RunHandle(self.name, found, data)
        pod = need(self.http, answer, field)
        pod_id = pod.get("id") if isinstance(pod, Mapping) else None
        if not isinstance(pod_id, str) or not pod_id:
            raise self.error(K.MALFORMED_RESPONSE, f"{field} answered no pod id")
        return RunHandle(self.name, pod_id, data)

    async def find(self, spec: LaunchSpec) -> RunHandle | None:
        """The pod named crucible-<job>-<attempt> that is not terminated, if any (re-attachment after a crash)."""
        found = await self._find_by_name(remote.run_name(spec))
        if found is None:
            return None
        return RunHandle(self.name, found, {"name": remote.run_name(spec), "spot": spec.offer.spot,
                                            "run_dir": remote.run_dir(spec, self.remote_root)})

    async def _find_by_name(self, name: str) -> str | None:
        answer = await self._gql(MY_PODS, {})
        pods = answer.get("myself", {}).get("pods") if isinstance(answer.get("myself"), Mapping) else None
        if not isinstance(pods, list):
            raise self.error(K.MALFORMED_RESPONSE, "myself.pods is not a list")
        for pod in pods:
            if isinstance(pod, Mapping) and pod.get("name") == name and pod.get("desiredStatus") != "TERMINATED":
                return str(pod.get("id"))
        return None

    async def _pod(self, handle: RunHandle) -> Mapping[str, Any] | None:
        try:
            answer = await self._gql(POD, {"input": {"podId": handle.ref}})
        except ProviderError as exc:
            if exc.kind is K.NOT_FOUND:
                return None
            raise
        if "pod" not in answer:
            raise self.error(K.MALFORMED_RESPONSE, "answer lacks `pod`")
        pod = answer["pod"]
        if pod is None:
            return None
        if not isinstance(pod, Mapping) or not isinstance(pod.get("desiredStatus"), str):
            raise self.error(K.MALFORMED_RESPONSE, "pod lacks desiredStatus")
        return pod

    @staticmethod
    def _ssh_address(pod: Mapping[str, Any]) -> tuple[str, int]:
        runtime = pod.get("runtime")
        ports = runtime.get("ports") if isinstance(runtime, Mapping) else None
        for port in ports if isinstance(ports, list) else []:
            if isinstance(port, Mapping) and port.get("privatePort") == 22 and port.get("isIpPublic") and port.get("ip"):
                return str(port["ip"]), int(port.get("publicPort") or 22)
        return "", 0

    async def status(self, handle: RunHandle) -> RunStatus:
        """pod(podId): RUNNING without runtime -> PROVISIONING; with runtime -> SSH probe (or RUNNING); EXITED/TERMINATED
        without our cancel -> PREEMPTED (the wrapper keeps the container alive after the command)."""
        pod = await self._pod(handle)
        cancelled = handle.ref in self._cancelled
        if pod is None:
            if cancelled:
                return RunStatus(RunState.CANCELLED)
            raise self.error(K.NOT_FOUND, f"pod {handle.ref} is unknown to RunPod")
        desired = pod["desiredStatus"]
        if desired in ("CREATED", "RESTARTING"):
            return RunStatus(RunState.PROVISIONING, message=desired.lower())
        if desired == "RUNNING":
            if not isinstance(pod.get("runtime"), Mapping):
                return RunStatus(RunState.PROVISIONING, message="pulling image / starting container")
            if self.probe is None:
                return RunStatus(RunState.RUNNING, message=remote.NO_PROBE)
            host, port = self._ssh_address(pod)
            if not host:
                return RunStatus(RunState.RUNNING, message="no public ssh port yet")
            return await self.probe.outcome(host, port, handle.data.get("run_dir", ""))
        if desired in ("EXITED", "TERMINATED"):
            if cancelled:
                return RunStatus(RunState.CANCELLED, message=desired.lower())
            why = "spot pod interrupted" if handle.data.get("spot") else "pod stopped outside the scheduler"
            return RunStatus(RunState.PREEMPTED, message=f"{why} ({pod.get('lastStatusChange') or desired})")
        raise self.error(K.MALFORMED_RESPONSE, f"unknown desiredStatus {desired!r}")

    async def cancel(self, handle: RunHandle) -> None:
        """podTerminate; a pod RunPod no longer knows counts as terminated."""
        self._cancelled.add(handle.ref)
        try:
            await self._gql(TERMINATE, {"input": {"podId": handle.ref}})
        except ProviderError as exc:
            if exc.kind is not K.NOT_FOUND:
                raise

    async def read_logs(self, handle: RunHandle, stream: str, offset: int) -> LogChunk:
        """Log bytes over SSH when ssh_key_path is set (RunPod's GraphQL has no log query); otherwise empty."""
        if self.probe is None:
            return LogChunk(stream, offset, b"", offset)
        pod = await self._pod(handle)
        host, port = self._ssh_address(pod) if pod else ("", 0)
        return await remote.read_remote_log(self.probe, host, port, handle.data.get("run_dir", ""), stream, offset)
