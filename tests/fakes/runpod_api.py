"""A loopback fake of RunPod's GraphQL API (POST /graphql): deploy on-demand/spot pods, pod status, terminate.

Like RunPod, client errors come back as HTTP 200 with an `errors` array (capacity, balance, bad key, bad input).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from tests.fakes.api_fields import RUNPOD_CLOUD_TYPES, RUNPOD_ON_DEMAND, RUNPOD_SPOT, violations
from tests.fakes.server import FakeServer, Request, Response

NO_CAPACITY = "There are no longer any instances available with the requested specifications. Please refresh and try again."


def _errors(message: str, field: str | None = None, code: str | None = None) -> Response:
    error: dict[str, Any] = {"message": message, "locations": [{"line": 1, "column": 60}]}
    if field:
        error["path"] = [field]
    if code:
        error["extensions"] = {"code": code}
    return Response.json({"data": {field: None} if field else None, "errors": [error]})


class FakeRunPod(FakeServer):
    """State: pods by id. `available` holds GPU type ids with stock; `balance` below 0.1 refuses deploys."""

    def __init__(self, api_key: str) -> None:
        super().__init__(self.handle)
        self.api_key = api_key
        self.pods: dict[str, dict] = {}
        self.available = {"NVIDIA A40", "NVIDIA GeForce RTX 4090"}
        self.balance = 25.0
        self.min_bid = 0.2
        self.inputs: list[dict] = []
        self._ids = itertools.count(1)

    def set_pod(self, pod_id: str, **fields: Any) -> None:
        """Change pod fields (desiredStatus, runtime, lastStatusChange)."""
        self.pods[pod_id].update(fields)

    def handle(self, r: Request) -> Response:
        """Route one GraphQL operation by the field it selects."""
        if r.method != "POST" or r.path != "/graphql":
            return Response(404, b"404 page not found", {"Content-Type": "text/plain"})
        if r.headers.get("authorization") != f"Bearer {self.api_key}":
            return _errors("Unauthorized request, please check your API key.", code="UNAUTHENTICATED")
        try:
            payload = r.json()
            query, variables = payload["query"], payload.get("variables") or {}
        except (ValueError, KeyError, TypeError):
            return Response.json({"errors": [{"message": "Must provide query string."}]}, 400)
        inp = variables.get("input") or {}
        if "podFindAndDeployOnDemand" in query:
            return self._deploy(inp, "podFindAndDeployOnDemand", spot=False)
        if "podRentInterruptable" in query:
            return self._deploy(inp, "podRentInterruptable", spot=True)
        if "podTerminate" in query:
            if inp.get("podId") not in self.pods:
                return _errors("Pod not found", "podTerminate")
            self.pods.pop(inp["podId"])
            return Response.json({"data": {"podTerminate": None}})
        if "myself" in query:
            return Response.json(
                {
                    "data": {
                        "myself": {
                            "pods": [
                                {"id": p["id"], "name": p["name"], "desiredStatus": p["desiredStatus"]}
                                for p in self.pods.values()
                            ]
                        }
                    }
                }
            )
        if re.search(r"\bpod\s*\(", query):
            pod = self.pods.get(inp.get("podId"))
            return Response.json({"data": {"pod": pod}})
        return Response.json(
            {"errors": [{"message": "Cannot query field on type Query", "extensions": {"code": "GRAPHQL_VALIDATION_FAILED"}}]},
            400,
        )

    def _deploy(self, inp: dict, field: str, spot: bool) -> Response:
        self.inputs.append(inp)
        type_name = "PodRentInterruptableInput" if spot else "PodFindAndDeployOnDemandInput"
        for problem in violations(inp, RUNPOD_SPOT if spot else RUNPOD_ON_DEMAND):
            if problem.startswith("unknown field"):
                name = problem.split("'")[1]
                return _errors(
                    f'Variable "$input" got invalid value; Field "{name}" is not defined by type "{type_name}".',
                    None,
                    "BAD_USER_INPUT",
                )
            if not problem.startswith("missing"):
                return _errors(f'Variable "$input" got invalid value; {problem}.', None, "BAD_USER_INPUT")
        if inp.get("cloudType", "ALL") not in RUNPOD_CLOUD_TYPES:
            return _errors(
                f'Variable "$input" got invalid value; Value "{inp["cloudType"]}" does not exist in "CloudTypeEnum" enum.',
                None,
                "BAD_USER_INPUT",
            )
        for key in ("imageName", "gpuTypeId", "gpuCount"):
            if not inp.get(key):
                return _errors(
                    f'Variable "$input" got invalid value; Field "{key}" of required type was not provided.',
                    field,
                    "BAD_USER_INPUT",
                )
        if self.balance < 0.1:
            return _errors("You do not have enough balance to deploy this pod.", field)
        if inp["gpuTypeId"] not in self.available:
            return _errors(NO_CAPACITY, field)
        if spot and float(inp.get("bidPerGpu") or 0) < self.min_bid:
            return _errors(f"Your bid price is below the minimum bid of {self.min_bid}.", field)
        pod_id = f"pod{next(self._ids):03d}xyz"
        self.pods[pod_id] = {
            "id": pod_id,
            "name": inp.get("name"),
            "desiredStatus": "RUNNING",
            "imageName": inp["imageName"],
            "costPerHr": 0.39 if not spot else inp["bidPerGpu"],
            "lastStatusChange": "Rented by User",
            "uptimeSeconds": 0,
            "runtime": None,
            "env": inp.get("env"),
            "dockerArgs": inp.get("dockerArgs"),
        }
        return Response.json(
            {"data": {field: {k: self.pods[pod_id][k] for k in ("id", "name", "desiredStatus", "costPerHr", "lastStatusChange")}}}
        )
