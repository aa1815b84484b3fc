"""RunPod adapter: GPU pods via its GraphQL API (on-demand or spot with a bid), status polling and termination.

The job command runs as the container's start command (dockerArgs) under the wrapper; errors arrive in HTTP 200 bodies.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from crucible.scheduler.providers import remote
from crucible.scheduler.providers.base import (
    LaunchSpec,
    OfferRef,
    ProviderCapabilities,
    ProviderErrorKind,
    RunHandle,
    RunState,
    RunStatus,
)
from crucible.scheduler.providers.http import LaunchPreview, kind_for_status, need
from crucible.scheduler.providers.vm import Machine, MachineDown, MachineUp, Phase, VMProvider

_POD_FIELDS = "id name desiredStatus costPerHr lastStatusChange"
DEPLOY = (
    "mutation Deploy($input: PodFindAndDeployOnDemandInput!) { podFindAndDeployOnDemand(input: $input) { " + _POD_FIELDS + " } }"
)
DEPLOY_SPOT = (
    "mutation DeploySpot($input: PodRentInterruptableInput!) { podRentInterruptable(input: $input) { " + _POD_FIELDS + " } }"
)
POD = (
    "query Pod($input: PodFilter!) { pod(input: $input) { " + _POD_FIELDS + " uptimeSeconds runtime { uptimeInSeconds "
    "ports { ip isIpPublic privatePort publicPort type } } } }"
)
MY_PODS = "query MyPods { myself { pods { id name desiredStatus } } }"
TERMINATE = "mutation Terminate($input: PodTerminateInput!) { podTerminate(input: $input) }"

#: Catalog GPU names -> RunPod gpuTypeIds (the ids RunPod's `gpuTypes` query lists; the same pairs SkyPilot keeps).
GPU_TYPE_IDS = {
    "A100-80GB": "NVIDIA A100 80GB PCIe",
    "A100-80GB-SXM": "NVIDIA A100-SXM4-80GB",
    "A30": "NVIDIA A30",
    "A40": "NVIDIA A40",
    "B200": "NVIDIA B200",
    "H100": "NVIDIA H100 PCIe",
    "H100-SXM": "NVIDIA H100 80GB HBM3",
    "H100-NVL": "NVIDIA H100 NVL",
    "H200-SXM": "NVIDIA H200",
    "H200": "NVIDIA H200",
    "L4": "NVIDIA L4",
    "L40": "NVIDIA L40",
    "L40S": "NVIDIA L40S",
    "MI300X": "AMD Instinct MI300X OAM",
    "RTX3090": "NVIDIA GeForce RTX 3090",
    "RTX4090": "NVIDIA GeForce RTX 4090",
    "RTX5090": "NVIDIA GeForce RTX 5090",
    "RTXA4000": "NVIDIA RTX A4000",
    "RTXA4500": "NVIDIA RTX A4500",
    "RTXA5000": "NVIDIA RTX A5000",
    "RTXA6000": "NVIDIA RTX A6000",
    "RTX4000-Ada": "NVIDIA RTX 4000 Ada Generation",
    "RTX6000-Ada": "NVIDIA RTX 6000 Ada Generation",
    "V100-32GB-SXM2": "Tesla V100-SXM2-32GB",
}
_KNOWN_IDS = frozenset(GPU_TYPE_IDS.values())
_SKYPILOT_TYPE = re.compile(r"(\d+)x_([A-Za-z0-9-]+)_(SECURE|COMMUNITY)")
_COUNTED_ID = re.compile(r"(\d+)x (.+)")
_DATA_CENTER = re.compile(r"[A-Z]{2,3}-[A-Z]{2,4}-\d+")
_COUNTRY = re.compile(r"[A-Z]{2}")

_CAPACITY = (
    "no longer any instances available",
    "not enough free gpus",
    "no instances available",
    "there are no available",
    "could not find any pods",
    "out of stock",
    "no gpus available",
)
_QUOTA = ("balance", "insufficient funds", "spend limit", "quota", "not enough credit", "too many pods")
_AUTH = ("unauthorized", "unauthenticated", "api key", "not authenticated", "permission denied", "forbidden")
_TRANSIENT = ("something went wrong", "internal server error", "timeout", "temporarily")
_NOT_FOUND = ("pod not found", "does not exist", "could not find pod")


def classify(messages: list[str], codes: list[str]) -> ProviderErrorKind:
    """The kind of a RunPod GraphQL error from its messages and extension codes (capacity checked first)."""
    text = " ".join(messages).lower()
    if any(s in text for s in _CAPACITY):
        return ProviderErrorKind.CAPACITY
    if any(s in text for s in _QUOTA):
        return ProviderErrorKind.QUOTA
    if any(s in text for s in _AUTH) or "UNAUTHENTICATED" in codes or "FORBIDDEN" in codes:
        return ProviderErrorKind.AUTH
    if any(s in text for s in _NOT_FOUND):
        return ProviderErrorKind.NOT_FOUND
    if any(s in text for s in _TRANSIENT) or "INTERNAL_SERVER_ERROR" in codes:
        return ProviderErrorKind.TRANSIENT
    return ProviderErrorKind.INVALID


def graphql_error_kind(errors: list[Mapping[str, Any]]) -> ProviderErrorKind:
    """classify() over a GraphQL `errors` array."""
    messages = [str(e.get("message", "")) for e in errors]
    codes = [str(e.get("extensions", {}).get("code", "")) for e in errors if isinstance(e.get("extensions"), Mapping)]
    return classify(messages, codes)


class RunPodProvider(VMProvider):
    """RunPod pods. Settings: base_url (default https://api.runpod.io), graphql_path, cloud_type (ALL|SECURE|COMMUNITY),
    image (default container image), container_disk_gb, volume_gb, volume_mount_path, bid_factor (spot bid = offer price
    per GPU x factor), ssh_key_path/ssh_user/ssh_command (outcome and logs over SSH), remote_root."""

    name = "runpod"
    default_base_url = "https://api.runpod.io"
    capabilities = ProviderCapabilities(spot=True, live_logs=False, artifacts=False)
    noun = "pod"
    display_name = "RunPod"
    launch_verb = "deploy of"
    default_ssh_user = "root"

    def __init__(self, settings: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        self.graphql_path = self.settings.str("graphql_path", "/graphql")
        self.cloud_type = self.settings.str("cloud_type", "ALL").upper()
        if self.cloud_type not in ("ALL", "SECURE", "COMMUNITY"):
            raise ValueError(f"runpod.cloud_type: must be ALL, SECURE or COMMUNITY, got {self.cloud_type!r}")
        self.image = self.settings.str("image", "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04")
        self.container_disk_gb = self.settings.int("container_disk_gb", 40, minimum=1)
        self.volume_gb = self.settings.int("volume_gb", 20)
        self.volume_mount_path = self.settings.str("volume_mount_path", "/workspace")
        self.bid_factor = self.settings.float("bid_factor", 1.0, minimum=0.01)
        self.remote_root = self.settings.str("remote_root", self.volume_mount_path.rstrip("/") + "/crucible")
        self.attach_probe()
        # The probe's public key is authorized in the pod next to the account's $PUBLIC_KEY (setting ssh_public_key,
        # or ssh_key_path + ".pub" when that file exists).
        self.public_key = self.settings.str("ssh_public_key")
        if not self.public_key and self.probe is not None:
            pub = Path(self.probe.key_path + ".pub")
            self.public_key = pub.read_text(encoding="utf-8").strip() if pub.is_file() else ""

    @staticmethod
    def map_error(status: int, body: Any, text: str) -> tuple[ProviderErrorKind, str]:
        """Non-200 answers: GraphQL validation errors (400) carry `errors`; 401/403 are AUTH."""
        errors = body.get("errors") if isinstance(body, Mapping) else None
        if isinstance(errors, list) and errors and all(isinstance(e, Mapping) for e in errors):
            message = "; ".join(str(e.get("message", "")) for e in errors)
            kind = kind_for_status(status) if status in (401, 403, 429) or status >= 500 else graphql_error_kind(errors)
            return kind, message
        return kind_for_status(status), text[:300]

    async def _gql(self, query: str, variables: Mapping[str, Any], *, idempotent: bool = True) -> Mapping[str, Any]:
        return await self.http.graphql(self.graphql_path, query, variables, idempotent=idempotent, error_kind=graphql_error_kind)

    def gpu_type(self, offer: OfferRef) -> tuple[str, int, str, str]:
        """(gpuTypeId, gpuCount, cloudType, problem) of an offer.

        Accepts a RunPod gpuTypeId ("NVIDIA A100 80GB PCIe"), a catalog GPU name ("A100-80GB"), or SkyPilot's instance
        type "<count>x_<GPU>_<SECURE|COMMUNITY>" (its RunPod catalog), or "<count>x <gpuTypeId>". RunPod answers an
        unknown gpuTypeId as if it had no capacity, so unknown names are refused here, before any call.
        """
        count = max(1, offer.gpu_count)
        cloud = self.cloud_type
        name = offer.instance_type or offer.gpu_name
        skypilot = _SKYPILOT_TYPE.fullmatch(name)
        if skypilot:
            count, name, cloud = int(skypilot.group(1)), skypilot.group(2), skypilot.group(3)
        counted = _COUNTED_ID.fullmatch(name)
        if counted:  # the cost catalog's "<count>x <gpuTypeId>"
            count, name = int(counted.group(1)), counted.group(2)
        if name in GPU_TYPE_IDS:
            return GPU_TYPE_IDS[name], count, cloud, ""
        if name in _KNOWN_IDS or name.startswith(("NVIDIA ", "AMD ", "Tesla ")):
            return name, count, cloud, ""
        return (
            name,
            count,
            cloud,
            (
                f"unknown RunPod GPU type {name!r}: use a gpuTypeId such as 'NVIDIA A100 80GB PCIe' "
                f"or one of {', '.join(sorted(GPU_TYPE_IDS))}"
            ),
        )

    def _deploy_plan(self, spec: LaunchSpec) -> tuple[str, str, dict[str, Any], list[str]]:
        """(query, mutation field, `input`, problems) of the deploy mutation for `spec`.

        Fields of PodFindAndDeployOnDemandInput / PodRentInterruptableInput as in RunPod's GraphQL reference and its
        Python SDK (runpod/api/mutations/pods.py). The offer's region is a data center id ("US-TX-1" -> dataCenterId)
        or a country ("US" -> countryCode, as SkyPilot's catalog lists it).
        """
        problems: list[str] = []
        gpu_type, gpu_count, cloud_type, problem = self.gpu_type(spec.offer)
        if problem:
            problems.append(problem)
        name = remote.run_name(spec)
        folder = remote.run_dir(spec, self.remote_root)
        env: dict[str, str] = {}
        args = ""
        try:
            env = remote.job_env(spec)
            args = remote.container_args(remote.wrapper_script(spec, folder, export_env=False), sshd=True)
        except ValueError as exc:
            problems.append(str(exc))
        if self.public_key:
            env[remote.EXTRA_PUBLIC_KEY_ENV] = self.public_key
        pod_input: dict[str, Any] = {
            "name": name,
            "imageName": spec.container_image or self.image,
            "gpuTypeId": gpu_type,
            "cloudType": cloud_type,
            "gpuCount": gpu_count,
            "volumeInGb": self.volume_gb,
            "containerDiskInGb": self.container_disk_gb,
            "volumeMountPath": self.volume_mount_path,
            "env": [{"key": k, "value": v} for k, v in sorted(env.items())],
            "dockerArgs": args,
            "ports": "22/tcp",
            "supportPublicIp": True,
        }
        region = spec.offer.region
        if _DATA_CENTER.fullmatch(region):
            pod_input["dataCenterId"] = region
        elif _COUNTRY.fullmatch(region):
            pod_input["countryCode"] = region
        elif region:
            problems.append(f"offer region {region!r} is neither a RunPod data center id (US-TX-1) nor a country code (US)")
        if spec.offer.spot:
            if spec.offer.price_usd_per_hour <= 0:
                problems.append("a spot offer needs price_usd_per_hour to derive bidPerGpu")
            else:
                pod_input["bidPerGpu"] = round(spec.offer.price_usd_per_hour / gpu_count * self.bid_factor, 4)
            return DEPLOY_SPOT, "podRentInterruptable", pod_input, problems
        return DEPLOY, "podFindAndDeployOnDemand", pod_input, problems

    def describe_launch(self, spec: LaunchSpec) -> LaunchPreview:
        """The deploy mutation exactly as submit() posts it: {"query", "variables": {"input"}} (the key redacted)."""
        query, _field, pod_input, problems = self._deploy_plan(spec)
        body = {"query": query, "variables": {"input": pod_input}}
        return LaunchPreview(self.name, (self.preview_request("POST", self.graphql_path, body),), tuple(problems))

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """podFindAndDeployOnDemand (or podRentInterruptable with bidPerGpu when the offer is spot)."""
        query, field, pod_input, problems = self._deploy_plan(spec)
        self.refuse(problems)

        def launched_id(answer: Any) -> str:
            pod = need(self.http, answer, field)
            pod_id = pod.get("id") if isinstance(pod, Mapping) else None
            if not isinstance(pod_id, str) or not pod_id:
                raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, f"{field} answered no pod id")
            return pod_id

        return await self.launch_or_adopt(
            pod_input["name"],
            self._handle_data(spec),
            lambda: self._gql(query, {"input": pod_input}, idempotent=False),
            launched_id,
        )

    def _handle_data(self, spec: LaunchSpec, found: Machine | None = None) -> dict[str, Any]:
        return {"name": remote.run_name(spec), "run_dir": remote.run_dir(spec, self.remote_root), "spot": spec.offer.spot}

    async def _machines_named(self, name: str) -> AsyncIterator[Machine]:
        """myself.pods (every pod of the account; the query cannot filter by name)."""
        answer = await self._gql(MY_PODS, {})
        pods = answer.get("myself", {}).get("pods") if isinstance(answer.get("myself"), Mapping) else None
        if not isinstance(pods, list):
            raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, "myself.pods is not a list")
        for pod in pods:
            if isinstance(pod, Mapping):
                yield pod

    def _is_live(self, machine: Machine) -> bool:
        return machine.get("desiredStatus") != "TERMINATED"

    async def _fetch(self, ref: str) -> Machine | None:
        """pod(podId); None when RunPod answers `pod: null`."""
        answer = await self._gql(POD, {"input": {"podId": ref}})
        if "pod" not in answer:
            raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, "answer lacks `pod`")
        pod = answer["pod"]
        if pod is None:
            return None
        if not isinstance(pod, Mapping) or not isinstance(pod.get("desiredStatus"), str):
            raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, "pod lacks desiredStatus")
        return pod

    def _ssh_address(self, machine: Machine) -> tuple[str, int]:
        """The public ip and port mapped to the pod's port 22."""
        runtime = machine.get("runtime")
        ports = runtime.get("ports") if isinstance(runtime, Mapping) else None
        for port in ports if isinstance(ports, list) else []:
            if isinstance(port, Mapping) and port.get("privatePort") == 22 and port.get("isIpPublic") and port.get("ip"):
                return str(port["ip"]), int(port.get("publicPort") or 22)
        return "", 0

    def _phase(self, machine: Machine, handle: RunHandle) -> Phase:
        """desiredStatus RUNNING without runtime -> PROVISIONING; with runtime -> up (the SSH probe); EXITED/TERMINATED
        -> down (the wrapper keeps the container alive after the command, so only an interruption stops it)."""
        desired = machine["desiredStatus"]
        if desired in ("CREATED", "RESTARTING"):
            return RunStatus(RunState.PROVISIONING, message=desired.lower())
        if desired == "RUNNING":
            if not isinstance(machine.get("runtime"), Mapping):
                return RunStatus(RunState.PROVISIONING, message="pulling image / starting container")
            return MachineUp(no_address=RunStatus(RunState.RUNNING, message="no public ssh port yet"))
        if desired in ("EXITED", "TERMINATED"):
            why = "spot pod interrupted" if handle.data.get("spot") else "pod stopped outside the scheduler"
            return MachineDown(desired.lower(), f"{why} ({machine.get('lastStatusChange') or desired})")
        raise self.error(ProviderErrorKind.MALFORMED_RESPONSE, f"unknown desiredStatus {desired!r}")

    async def _terminate(self, ref: str) -> None:
        """podTerminate."""
        await self._gql(TERMINATE, {"input": {"podId": ref}})
