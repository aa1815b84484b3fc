"""A loopback fake of the Lambda Cloud REST API (/api/v1): instance types, launch, instances, terminate.

Errors use Lambda's shape {"error": {"code", "message", "suggestion"}}; capacity and quota are switchable.
"""

from __future__ import annotations

import itertools
import re

from tests.fakes.api_fields import LAMBDA_LAUNCH, violations
from tests.fakes.server import FakeServer, Request, Response, bearer_ok

PREFIX = "/api/v1"
#: Instance types and regions the fake knows (Lambda's names; the catalog's rows use them).
INSTANCE_TYPES = (
    "gpu_1x_a10",
    "gpu_1x_a6000",
    "gpu_1x_a100",
    "gpu_1x_a100_sxm4",
    "gpu_8x_a100_80gb_sxm4",
    "gpu_1x_h100_pcie",
    "gpu_1x_h100_sxm5",
    "gpu_2x_h100_sxm5",
    "gpu_4x_h100_sxm5",
    "gpu_8x_h100_sxm5",
    "gpu_1x_gh200",
    "gpu_8x_b200_sxm6",
    "gpu_8x_v100",
    "gpu_1x_rtx6000",
    "gpu_2x_a6000",
    "gpu_4x_a6000",
    "gpu_2x_a100",
    "gpu_4x_a100",
    "gpu_8x_a100",
)
REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-east-3",
    "us-west-1",
    "us-west-2",
    "us-west-3",
    "us-south-1",
    "us-south-2",
    "us-south-3",
    "us-midwest-1",
    "us-midwest-2",
    "europe-central-1",
    "asia-south-1",
    "europe-south-1",
    "asia-northeast-1",
    "asia-northeast-2",
    "me-west-1",
    "australia-east-1",
)


def _error(status: int, code: str, message: str, suggestion: str = "") -> Response:
    error = {"code": code, "message": message}
    if suggestion:
        error["suggestion"] = suggestion
    return Response.json({"error": error}, status)


class FakeLambda(FakeServer):
    """State: instances by id. `capacity` holds (region, type) pairs that can launch; `quota` how many more may."""

    def __init__(self, api_key: str) -> None:
        super().__init__(self.handle)
        self.api_key = api_key
        self.instances: dict[str, dict] = {}
        self.capacity: set[tuple[str, str]] = {("us-east-1", "gpu_1x_a10")}
        self.instance_types = set(INSTANCE_TYPES)  # what Lambda sells; another name is invalid-parameters
        self.regions = set(REGIONS)
        self.quota = 10
        self.launch_bodies: list[dict] = []
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        """The adapter's base_url."""
        return self.url + PREFIX

    def set_status(self, instance_id: str, status: str, ip: str | None = None) -> None:
        """Move an instance to booting|active|unhealthy|terminating|terminated."""
        self.instances[instance_id]["status"] = status
        if ip is not None:
            self.instances[instance_id]["ip"] = ip

    def handle(self, r: Request) -> Response:
        """Route one request."""
        if not bearer_ok(r, self.api_key):
            return _error(
                401,
                "global/invalid-api-key",
                "API key was invalid, expired, or deleted.",
                "Check your API key or create a new one, then try again.",
            )
        path = r.path.removeprefix(PREFIX)
        if r.method == "GET" and path == "/instance-types":
            return Response.json(
                {
                    "data": {
                        "gpu_1x_a10": {
                            "instance_type": {
                                "name": "gpu_1x_a10",
                                "description": "1x A10 (24 GB PCIe)",
                                "gpu_description": "A10",
                                "price_cents_per_hour": 75,
                                "specs": {"vcpus": 30, "memory_gib": 200, "storage_gib": 1400, "gpus": 1},
                            },
                            "regions_with_capacity_available": [
                                {"name": r_, "description": r_} for r_, _ in sorted(self.capacity)
                            ],
                        }
                    }
                }
            )
        if r.method == "POST" and path == "/instance-operations/launch":
            return self._launch(r)
        if r.method == "POST" and path == "/instance-operations/terminate":
            ids = r.json().get("instance_ids")
            if not isinstance(ids, list) or not ids:
                return _error(400, "global/invalid-parameters", "instance_ids must be a non-empty list")
            missing = [i for i in ids if i not in self.instances]
            if missing:
                return _error(404, "global/object-does-not-exist", "Specified instance does not exist.")
            for i in ids:
                self.instances[i]["status"] = "terminated"
            return Response.json({"data": {"terminated_instances": [self.instances[i] for i in ids]}})
        if r.method == "GET" and path == "/instances":
            return Response.json({"data": list(self.instances.values())})
        m = re.fullmatch(r"/instances/([^/]+)", path)
        if r.method == "GET" and m:
            inst = self.instances.get(m.group(1))
            if inst is None:
                return _error(404, "global/object-does-not-exist", "Specified instance does not exist.")
            return Response.json({"data": inst})
        return _error(404, "global/not-found", f"no route {r.method} {r.path}")

    def _launch(self, r: Request) -> Response:
        body = r.json()
        self.launch_bodies.append(body)
        problems = violations(body, LAMBDA_LAUNCH)
        if problems:
            return _error(400, "global/invalid-parameters", f"Invalid request body: {'; '.join(problems)}")
        for field in ("region_name", "instance_type_name", "ssh_key_names"):
            if not body.get(field):
                return _error(400, "global/invalid-parameters", f"Missing or invalid field {field}")
        if len(body["ssh_key_names"]) != 1:
            return _error(400, "global/invalid-parameters", "Exactly one SSH key name must be given")
        if len(body.get("file_system_names") or []) > 1:
            return _error(400, "global/invalid-parameters", "At most one file system may be attached")
        if len(body.get("name") or "") > 64:
            return _error(400, "global/invalid-parameters", "Instance name must be at most 64 characters")
        if len((body.get("user_data") or "").encode()) > 1 << 20:
            return _error(400, "global/invalid-parameters", "user_data must be at most 1 MB")
        if body["instance_type_name"] not in self.instance_types:
            return _error(
                400,
                "global/invalid-parameters",
                "Invalid instance type name",
                "Use an instance type name from GET /instance-types.",
            )
        if body["region_name"] not in self.regions:
            return _error(400, "global/invalid-parameters", "Invalid region name", "Use a region name from GET /instance-types.")
        if self.quota <= 0:
            return _error(
                400, "global/quota-exceeded", "Quota exceeded for instance launches.", "Contact Support to increase your quota."
            )
        if (body["region_name"], body["instance_type_name"]) not in self.capacity:
            return _error(
                400,
                "instance-operations/launch/insufficient-capacity",
                "Not enough capacity to fulfill launch request.",
                "Choose an instance type with capacity.",
            )
        self.quota -= 1
        instance_id = f"0920582c7ff041399e34823a0be6{next(self._ids):04d}"
        self.instances[instance_id] = {
            "id": instance_id,
            "name": body.get("name"),
            "ip": None,
            "status": "booting",
            "ssh_key_names": body["ssh_key_names"],
            "file_system_names": body.get("file_system_names", []),
            "region": {"name": body["region_name"], "description": body["region_name"]},
            "instance_type": {"name": body["instance_type_name"]},
            "hostname": None,
            "jupyter_token": None,
            "jupyter_url": None,
        }
        return Response.json({"data": {"instance_ids": [instance_id]}})
