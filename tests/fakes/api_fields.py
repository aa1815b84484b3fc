"""The launch request fields each provider documents, used by the fakes to reject what the real API rejects.

Sources (read 2026-12): Lambda Cloud API reference, LaunchInstanceRequest (docs-api.lambda.ai, also the generated
lambda-cloud-client docs); RunPod GraphQL reference (graphql-spec.runpod.io) as used by RunPod's Python SDK
(runpod/api/mutations/pods.py, podFindAndDeployOnDemand / podRentInterruptable inputs); Paperspace machines API
(`pspace machine create` flags, docs.digitalocean.com/reference/paperspace/pspace/commands/machine) and startup scripts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: field -> (type or tuple of types, required)
Schema = Mapping[str, tuple[type | tuple[type, ...], bool]]

LAMBDA_LAUNCH: Schema = {
    "region_name": (str, True),
    "instance_type_name": (str, True),
    "ssh_key_names": (list, True),  # exactly one
    "file_system_names": (list, False),  # at most one
    "file_system_mounts": (list, False),
    "quantity": (int, False),
    "name": (str, False),  # up to 64 characters
    "hostname": (str, False),
    "image": (dict, False),
    "user_data": (str, False),  # cloud-init, up to 1 MB
    "tags": (list, False),
    "firewall_rulesets": (list, False),
}

_RUNPOD_POD_INPUT: dict[str, tuple[type | tuple[type, ...], bool]] = {
    "name": (str, False),
    "imageName": (str, True),
    "gpuTypeId": (str, True),
    "gpuTypeIdList": (list, False),
    "cloudType": (str, False),  # ALL | SECURE | COMMUNITY
    "gpuCount": (int, True),
    "volumeInGb": (int, False),
    "containerDiskInGb": (int, False),
    "minVcpuCount": (int, False),
    "minMemoryInGb": (int, False),
    "dockerArgs": (str, False),
    "ports": (str, False),
    "volumeMountPath": (str, False),
    "env": (list, False),  # [{key, value}]
    "supportPublicIp": (bool, False),
    "startSsh": (bool, False),
    "startJupyter": (bool, False),
    "dataCenterId": ((str, type(None)), False),
    "countryCode": (str, False),
    "templateId": (str, False),
    "networkVolumeId": (str, False),
    "allowedCudaVersions": (list, False),
    "minDownload": (int, False),
    "minUpload": (int, False),
    "cudaVersion": (str, False),
    "stopAfter": (str, False),
    "terminateAfter": (str, False),
}
RUNPOD_ON_DEMAND: Schema = dict(_RUNPOD_POD_INPUT)
RUNPOD_SPOT: Schema = {**_RUNPOD_POD_INPUT, "bidPerGpu": ((float, int), True)}
RUNPOD_CLOUD_TYPES = ("ALL", "SECURE", "COMMUNITY")

PAPERSPACE_MACHINE: Schema = {
    "name": (str, True),
    "machineType": (str, True),
    "templateId": (str, True),
    "region": (str, True),
    "diskSize": (int, True),
    "networkId": (str, False),
    "publicIpType": (str, False),  # static | dynamic | none
    "autoSnapshotEnabled": (bool, False),
    "autoSnapshotFrequency": (str, False),
    "autoSnapshotSaveCount": (int, False),
    "autoShutdownEnabled": (bool, False),
    "autoShutdownTimeout": (int, False),
    "autoShutdownForce": (bool, False),
    "takeInitialSnapshot": (bool, False),
    "restorePointEnabled": (bool, False),
    "restorePointFrequency": (str, False),
    "startupScriptId": (str, False),
    "startOnCreate": (bool, False),
    "enableNvlink": (bool, False),
    "accessorIds": (list, False),
    "emailPassword": (bool, False),
}
PAPERSPACE_STARTUP_SCRIPT: Schema = {
    "name": (str, True),
    "script": (str, True),
    "isRunOnce": (bool, False),
    "isEnabled": (bool, False),
    "description": (str, False),
}


def violations(body: Any, schema: Schema) -> list[str]:
    """What is wrong with `body` for `schema`: unknown fields, missing required ones, wrong JSON types."""
    if not isinstance(body, Mapping):
        return [f"body must be an object, got {type(body).__name__}"]
    out = [f"unknown field {k!r}" for k in body if k not in schema]
    for field, (kind, required) in schema.items():
        if field not in body or body[field] is None:
            if required:
                out.append(f"missing required field {field!r}")
            continue
        value = body[field]
        if isinstance(value, bool) and kind in (int, float, (float, int)):
            out.append(f"field {field!r} must be a number, got a boolean")
        elif not isinstance(value, kind):
            out.append(f"field {field!r} must be {getattr(kind, '__name__', kind)}, got {type(value).__name__}")
    return out
