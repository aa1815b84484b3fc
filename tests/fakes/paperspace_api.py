"""A loopback fake of the Paperspace REST API (/v1): startup scripts, machines (paginated), start/stop/delete.

Errors use {"code", "message"}; capacity and the machine limit are switchable.
"""

from __future__ import annotations

import itertools
import re

from tests.fakes.api_fields import PAPERSPACE_MACHINE, PAPERSPACE_STARTUP_SCRIPT, violations
from tests.fakes.server import FakeServer, Request, Response, bearer_ok

PREFIX = "/v1"
#: Machine types and regions the fake knows (Paperspace's names).
MACHINE_TYPES = (
    "C5",
    "C7",
    "P4000",
    "P5000",
    "P6000",
    "RTX4000",
    "RTX5000",
    "A4000",
    "A5000",
    "A6000",
    "V100-32G",
    "A100",
    "A100-80G",
    "H100",
    "A100-80Gx8",
    "H100x8",
)
REGIONS = ("ny2", "ams1", "ca1", "sf1", "East Coast (NY2)", "Europe (AMS1)", "West Coast (CA1)")


def _error(status: int, code: str, message: str) -> Response:
    return Response.json({"code": code, "message": message, "status": status}, status)


class FakePaperspace(FakeServer):
    """State: machines and startup scripts. `unavailable` machine types have no capacity; `machine_limit` caps count."""

    def __init__(self, api_key: str) -> None:
        super().__init__(self.handle)
        self.api_key = api_key
        self.machines: dict[str, dict] = {}
        self.scripts: dict[str, dict] = {}
        self.unavailable: set[str] = set()
        self.machine_limit = 50
        self.machine_types = set(MACHINE_TYPES)  # what Paperspace sells; another name is refused
        self.regions = set(REGIONS)
        self._ids = itertools.count(1)

    @property
    def base_url(self) -> str:
        """The adapter's base_url."""
        return self.url + PREFIX

    def add_machine(self, name: str, state: str = "ready") -> str:
        """A machine created outside the adapter (fills pages)."""
        machine_id = f"ps{next(self._ids):05d}"
        self.machines[machine_id] = {
            "id": machine_id,
            "name": name,
            "state": state,
            "machineType": "C5",
            "region": "ny2",
            "publicIp": None,
            "startupScriptId": None,
        }
        return machine_id

    def handle(self, r: Request) -> Response:
        """Route one request."""
        if not bearer_ok(r, self.api_key):
            return _error(401, "UNAUTHORIZED", "Invalid API key")
        path = r.path.removeprefix(PREFIX)
        if path == "/startup-scripts" and r.method == "POST":
            body = r.json()
            problems = violations(body, PAPERSPACE_STARTUP_SCRIPT)
            if problems:
                return _error(400, "BAD_REQUEST", "; ".join(problems))
            if not body.get("name") or not body.get("script"):
                return _error(400, "BAD_REQUEST", "name and script are required")
            script_id = f"scr{next(self._ids):05d}"
            self.scripts[script_id] = {"id": script_id, **body}
            return Response.json(self.scripts[script_id])
        m = re.fullmatch(r"/startup-scripts/([^/]+)", path)
        if m and r.method == "DELETE":
            if self.scripts.pop(m.group(1), None) is None:
                return _error(404, "NOT_FOUND", "Startup script not found")
            return Response.json({"id": m.group(1)})
        if path == "/machines" and r.method == "GET":
            return self._list(r)
        if path == "/machines" and r.method == "POST":
            return self._create(r.json())
        m = re.fullmatch(r"/machines/([^/]+)(/start|/stop)?", path)
        if m:
            machine = self.machines.get(m.group(1))
            if machine is None:
                return _error(404, "NOT_FOUND", "Machine not found")
            if r.method == "GET" and not m.group(2):
                return Response.json(machine)
            if r.method == "PATCH" and m.group(2):
                machine["state"] = "starting" if m.group(2) == "/start" else "off"
                return Response.json({"data": machine})
            if r.method == "DELETE" and not m.group(2):
                self.machines.pop(m.group(1))
                return Response.json({"data": machine})
        return _error(404, "NOT_FOUND", f"no route {r.method} {r.path}")

    def _list(self, r: Request) -> Response:
        limit = int(r.arg("limit", "20"))
        name = r.arg("name")
        items = [m for m in self.machines.values() if not name or m["name"] == name]
        start = 0
        if r.arg("after"):
            ids = [m["id"] for m in items]
            if r.arg("after") not in ids:
                return _error(400, "BAD_REQUEST", "invalid cursor")
            start = ids.index(r.arg("after")) + 1
        page = items[start : start + limit]
        more = start + limit < len(items)
        return Response.json({"items": page, "hasMore": more, "nextPage": page[-1]["id"] if more else None})

    def _create(self, body: dict) -> Response:
        problems = violations(body, PAPERSPACE_MACHINE)
        if problems:
            return _error(400, "BAD_REQUEST", "; ".join(problems))
        for field in ("name", "machineType", "region", "diskSize", "templateId"):
            if not body.get(field):
                return _error(400, "BAD_REQUEST", f"{field} is required")
        if body["machineType"] not in self.machine_types:
            return _error(400, "BAD_REQUEST", f"Invalid machineType: {body['machineType']}")
        if body["region"] not in self.regions:
            return _error(400, "BAD_REQUEST", f"Invalid region: {body['region']}")
        if body.get("publicIpType") not in (None, "static", "dynamic", "none"):
            return _error(400, "BAD_REQUEST", "publicIpType must be static, dynamic or none")
        if len(self.machines) >= self.machine_limit:
            return _error(400, "MACHINE_LIMIT", "You have reached your limit of machines for this team.")
        if body["machineType"] in self.unavailable:
            return _error(
                400, "OUT_OF_CAPACITY", f"Machine type {body['machineType']} is out of capacity in region {body['region']}."
            )
        if body.get("startupScriptId") and body["startupScriptId"] not in self.scripts:
            return _error(400, "BAD_REQUEST", "startup script not found")
        machine_id = f"ps{next(self._ids):05d}"
        self.machines[machine_id] = {
            "id": machine_id,
            "name": body["name"],
            "machineType": body["machineType"],
            "region": body["region"],
            "state": "provisioning" if body.get("startOnCreate") else "off",
            "publicIp": None,
            "startupScriptId": body.get("startupScriptId"),
            "diskSize": body["diskSize"],
        }
        return Response.json({"data": self.machines[machine_id]})
