"""A loopback fake of the Kubernetes API server for batch/v1 Jobs, their pods and pod logs.

Errors are v1 Status objects; a namespace GPU quota (403 "exceeded quota") and bearer-token auth are modelled.
"""

from __future__ import annotations

import re
from typing import Any

from tests.fakes.server import FakeServer, Request, Response

NOW = "2026-11-23T10:00:00Z"


def status_error(code: int, reason: str, message: str, details: dict | None = None) -> Response:
    """A v1 Status failure."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return Response.json(body, code)


class FakeKubernetes(FakeServer):
    """State: jobs and pods per namespace. `gpu_quota` caps the nvidia.com/gpu limits of live jobs."""

    def __init__(self, token: str) -> None:
        super().__init__(self.handle)
        self.token = token
        self.jobs: dict[tuple[str, str], dict] = {}
        self.pods: dict[tuple[str, str], dict] = {}
        self.logs: dict[tuple[str, str], bytes] = {}
        self.gpu_quota = 8
        self.deletes: list[dict[str, Any]] = []

    # --- test controls -------------------------------------------------------------------------------------------
    def start_pod(self, ns: str, job: str, phase: str = "Running", **status: Any) -> str:
        """Create (or update) the job's pod in `phase` with extra pod status fields."""
        labels = self.jobs[(ns, job)]["spec"]["template"]["metadata"]["labels"]
        name = f"{job}-abcde"
        pod = self.pods.setdefault(
            (ns, name),
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": name,
                    "namespace": ns,
                    "labels": {**labels, "job-name": job},
                    "creationTimestamp": NOW,
                    "uid": f"uid-{name}",
                },
                "spec": self.jobs[(ns, job)]["spec"]["template"]["spec"],
                "status": {},
            },
        )
        pod["status"] = {"phase": phase, **status}
        if phase == "Running":
            self.jobs[(ns, job)]["status"] = {"active": 1, "startTime": NOW}
        return name

    def finish(self, ns: str, job: str, exit_code: int, *, disrupted: bool = False) -> None:
        """Terminate the job's container with `exit_code` and set the Job condition like the job controller."""
        name = f"{job}-abcde"
        conditions = []
        if disrupted:
            conditions.append(
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "PreemptionByScheduler",
                    "message": "Preempted in order to admit critical pod",
                    "lastTransitionTime": NOW,
                }
            )
        self.start_pod(
            ns,
            job,
            "Succeeded" if exit_code == 0 else "Failed",
            conditions=conditions,
            containerStatuses=[
                {
                    "name": "main",
                    "image": "img",
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "state": {
                        "terminated": {
                            "exitCode": exit_code,
                            "reason": "Completed" if exit_code == 0 else "Error",
                            "startedAt": NOW,
                            "finishedAt": NOW,
                        }
                    },
                }
            ],
        )
        cond_type, reason = ("Complete", None) if exit_code == 0 else ("Failed", "BackoffLimitExceeded")
        self.jobs[(ns, job)]["status"] = {
            "conditions": [
                {
                    "type": cond_type,
                    "status": "True",
                    "reason": reason,
                    "message": None if exit_code == 0 else "Job has reached the specified backoff limit",
                    "lastProbeTime": NOW,
                    "lastTransitionTime": NOW,
                }
            ],
            "succeeded" if exit_code == 0 else "failed": 1,
        }
        del name

    # --- API -----------------------------------------------------------------------------------------------------
    def handle(self, r: Request) -> Response:
        """Route one request."""
        if r.headers.get("authorization") != f"Bearer {self.token}":
            return status_error(401, "Unauthorized", "Unauthorized")
        m = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs(?:/([^/]+))?", r.path)
        if m:
            return self._jobs(r, m.group(1), m.group(2))
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", r.path)
        if m and r.method == "GET":
            selector = r.arg("labelSelector")
            key, _, value = selector.partition("=")
            items = [
                p
                for (ns, _), p in self.pods.items()
                if ns == m.group(1) and (not key or p["metadata"]["labels"].get(key) == value)
            ]
            return Response.json({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items})
        m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log", r.path)
        if m and r.method == "GET":
            pod = self.pods.get((m.group(1), m.group(2)))
            if pod is None:
                return status_error(404, "NotFound", f'pods "{m.group(2)}" not found')
            if pod["status"].get("phase") == "Pending":
                return status_error(
                    400, "BadRequest", f'container "main" in pod "{m.group(2)}" is waiting to start: ContainerCreating'
                )
            return Response(200, self.logs.get((m.group(1), m.group(2)), b""), {"Content-Type": "text/plain"})
        return status_error(404, "NotFound", "the server could not find the requested resource")

    def _jobs(self, r: Request, ns: str, name: str | None) -> Response:
        if r.method == "POST" and name is None:
            job = r.json()
            name = job["metadata"]["name"]
            if (ns, name) in self.jobs:
                return status_error(
                    409, "AlreadyExists", f'jobs.batch "{name}" already exists', {"name": name, "group": "batch", "kind": "jobs"}
                )
            containers = job["spec"]["template"]["spec"].get("containers") or []
            if not containers or not containers[0].get("image"):
                return status_error(
                    422, "Invalid", f'Job.batch "{name}" is invalid: spec.template.spec.containers[0].image: Required value'
                )
            want = sum(int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0)) for c in containers)
            used = sum(
                int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
                for j in self.jobs.values()
                for c in j["spec"]["template"]["spec"]["containers"]
            )
            if used + want > self.gpu_quota:
                return status_error(
                    403,
                    "Forbidden",
                    f'jobs.batch "{name}" is forbidden: exceeded quota: gpu-quota, '
                    f"requested: limits.nvidia.com/gpu={want}, used: "
                    f"limits.nvidia.com/gpu={used}, limited: "
                    f"limits.nvidia.com/gpu={self.gpu_quota}",
                )
            job["metadata"].update(namespace=ns, uid=f"uid-{name}", creationTimestamp=NOW, resourceVersion="1")
            job["status"] = {}
            self.jobs[(ns, name)] = job
            return Response.json(job, 201)
        if name is None:
            return status_error(405, "MethodNotAllowed", "method not allowed")
        job = self.jobs.get((ns, name))
        if job is None:
            return status_error(
                404, "NotFound", f'jobs.batch "{name}" not found', {"name": name, "group": "batch", "kind": "jobs"}
            )
        if r.method == "GET":
            return Response.json(job)
        if r.method == "DELETE":
            body = r.json() if r.body else {}
            policy = r.arg("propagationPolicy") or (body or {}).get("propagationPolicy", "")
            self.deletes.append({"name": name, "propagationPolicy": policy})
            del self.jobs[(ns, name)]
            if policy in ("Foreground", "Background"):
                for key in [k for k, p in self.pods.items() if k[0] == ns and p["metadata"]["labels"].get("job-name") == name]:
                    del self.pods[key]
            return Response.json(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": {"name": name, "group": "batch", "kind": "jobs", "uid": job["metadata"]["uid"]},
                }
            )
        return status_error(405, "MethodNotAllowed", "method not allowed")
