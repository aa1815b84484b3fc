"""A loopback fake of Replicate's trainings API: create under a model version, get, cancel.

Errors are problem+json {title, detail, status}; 402 for billing, 422 for invalid input, 404 for unknown versions.
"""

from __future__ import annotations

import itertools
import re

from tests.fakes.server import FakeServer, Request, Response, bearer_ok


def _problem(status: int, title: str, detail: str) -> Response:
    return Response.json(
        {"title": title, "detail": detail, "status": status}, status, {"Content-Type": "application/problem+json"}
    )


class FakeReplicate(FakeServer):
    """State: trainings by id. `versions` are the trainer versions that exist; `billing_ok` False answers 402."""

    def __init__(self, token: str) -> None:
        super().__init__(self.handle)
        self.token = token
        self.trainings: dict[str, dict] = {}
        self.versions = {("acme", "trainer", "abc123")}
        self.billing_ok = True
        self._ids = itertools.count(1)

    def advance(self, training_id: str, status: str, logs: str = "", error: str | None = None) -> None:
        """Move a training on and append to its logs."""
        t = self.trainings[training_id]
        t["status"] = status
        t["logs"] = (t["logs"] or "") + logs
        t["error"] = error
        if status == "succeeded":
            t["metrics"] = {"predict_time": 12.5}
            t["output"] = {"version": "acme/out:def456", "weights": "https://replicate.delivery/weights.tar"}

    def handle(self, r: Request) -> Response:
        """Route one request."""
        if not bearer_ok(r, self.token):
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        m = re.fullmatch(r"/v1/models/([^/]+)/([^/]+)/versions/([^/]+)/trainings", r.path)
        if m and r.method == "POST":
            if (m.group(1), m.group(2), m.group(3)) not in self.versions:
                return _problem(404, "Not found", "The requested resource could not be found.")
            if not self.billing_ok:
                return _problem(402, "Payment required", "You have reached your spend limit. Set up billing.")
            body = r.json()
            if not isinstance(body.get("destination"), str) or "/" not in body["destination"]:
                return _problem(422, "Invalid request", "destination: must be owner/model")
            if not isinstance(body.get("input"), dict):
                return _problem(422, "Invalid request", "input: must be an object")
            tid = f"zz4ibbonubfz7carwiefibzgga{next(self._ids):02d}"
            self.trainings[tid] = {
                "id": tid,
                "model": f"{m.group(1)}/{m.group(2)}",
                "version": m.group(3),
                "input": body["input"],
                "destination": body["destination"],
                "status": "starting",
                "logs": "",
                "error": None,
                "output": None,
                "metrics": {},
                "created_at": "2026-11-23T10:00:00.000Z",
                "started_at": None,
                "completed_at": None,
                "urls": {"get": f"{self.url}/v1/trainings/{tid}", "cancel": f"{self.url}/v1/trainings/{tid}/cancel"},
            }
            return Response.json(self.trainings[tid], 201)
        m = re.fullmatch(r"/v1/trainings/([^/]+)(/cancel)?", r.path)
        if m:
            t = self.trainings.get(m.group(1))
            if t is None:
                return _problem(404, "Not found", "The requested resource could not be found.")
            if m.group(2) and r.method == "POST":
                if t["status"] in ("starting", "processing"):
                    t["status"] = "canceled"
                return Response.json(t)
            if r.method == "GET" and not m.group(2):
                return Response.json(t)
        return _problem(404, "Not found", f"no route {r.method} {r.path}")
