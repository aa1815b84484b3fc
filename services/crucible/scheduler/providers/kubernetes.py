"""Kubernetes adapter: one batch/v1 Job per attempt with GPU limits, via the official client (sync, run in threads).

Status reads the Job's conditions and its pod; logs come from the pod log API; cancel deletes with propagation.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from crucible.scheduler.providers import remote
from crucible.scheduler.providers.base import (
    LaunchSpec,
    LogChunk,
    Provider,
    ProviderCapabilities,
    ProviderError,
    RunHandle,
    RunState,
    RunStatus,
)
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.credentials import SecretStore, summary
from crucible.scheduler.providers.http import LaunchPreview, Settings, kind_for_status, parse_retry_after

log = logging.getLogger(__name__)
T = TypeVar("T")

RUN_LABEL = "crucible.dev/run"
JOB_LABEL = "crucible.dev/job-id"
#: Where the init step unpacks the job's code and inputs (an emptyDir), and the main container's working directory.
WORK_MOUNT = "/crucible/work"
_DISRUPTED = ("Evicted", "Preempting", "NodeLost", "NodeShutdown", "Terminated")


class KubernetesProvider(Provider):
    """batch/v1 Jobs. Settings: base_url (API server, e.g. https://10.0.0.1:6443), namespace, kubeconfig, context,
    in_cluster, verify_ssl, ca_cert, image (when a job has no container_image), gpu_resource (nvidia.com/gpu),
    gpu_node_label (node label matched to the offer's gpu_name, e.g. nvidia.com/gpu.product), node_selector (k=v,...),
    checkpoint_pvc, service_account, ttl_seconds_after_finished, timeout_s, max_retries, retry_base_s."""

    name = "kubernetes"
    capabilities = ProviderCapabilities(spot=False, live_logs=True, artifacts=False)

    def __init__(self, settings: Mapping[str, str] | None = None, *, secrets: SecretStore | None = None) -> None:
        from kubernetes import client, config  # heavy import: only when the adapter is used

        self._client_mod = client
        s = self.settings = Settings(self.name, settings or {})
        self.secrets = secrets if secrets is not None else SecretStore(path=s.str("secrets_file") or None)
        self.namespace = s.str("namespace", "default")
        self.image = s.str("image")
        self.gpu_resource = s.str("gpu_resource", "nvidia.com/gpu")
        self.gpu_node_label = s.str("gpu_node_label")
        self.node_selector = self._pairs(s.str("node_selector"))
        self.checkpoint_pvc = s.str("checkpoint_pvc")
        self.service_account = s.str("service_account")
        self.ttl_after_finished = s.int("ttl_seconds_after_finished", 3600)
        self.timeout_s = s.float("timeout_s", 30.0, minimum=0.001)
        self.retry = s.retry()
        self._token = self.secrets.get(self.name, "token")
        cfg = client.Configuration()
        self._configured = False
        kubeconfig = s.str("kubeconfig")
        if s.bool("in_cluster"):
            config.load_incluster_config(client_configuration=cfg)
            self._configured = True
        elif kubeconfig:
            config.load_kube_config(config_file=kubeconfig, context=s.str("context") or None, client_configuration=cfg)
            self._configured = True
        base_url = s.str("base_url")
        if base_url:
            cfg.host = base_url.rstrip("/")
        if self._token is not None:
            cfg.api_key = {"BearerToken": self._token.reveal()}
            cfg.api_key_prefix = {"BearerToken": "Bearer"}
            self._configured = True
        cfg.verify_ssl = s.bool("verify_ssl", True)
        if s.str("ca_cert"):
            cfg.ssl_ca_cert = s.str("ca_cert")
        cfg.retries = False  # retries are ours (backoff, Retry-After), not urllib3's
        self._api_client = client.ApiClient(cfg)
        self.batch = client.BatchV1Api(self._api_client)
        self.core = client.CoreV1Api(self._api_client)
        self._host = cfg.host
        self._cancelled: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Mapping[str, str], *, secrets: SecretStore | None = None) -> Provider:
        """Build the adapter from its string settings; the bearer token comes from the SecretStore."""
        return cls(settings, secrets=secrets)

    def __repr__(self) -> str:
        return f"KubernetesProvider(host={self._host!r}, namespace={self.namespace!r})"

    @staticmethod
    def _pairs(text: str) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ValueError(f"kubernetes.node_selector: {item!r} is not key=value")
            out[key.strip()] = value.strip()
        return out

    def credentials_present(self) -> bool:
        """Whether a kubeconfig, in-cluster config or bearer token is configured."""
        return self._configured

    def credentials_hint(self) -> str:
        """Where credentials are looked for."""
        return "setting kubeconfig or in_cluster, or " + self.secrets.hint(self.name, "token")

    def error(self, kind: K, message: str, status: int | None = None, retry_after_s: float | None = None) -> ProviderError:
        """A ProviderError whose message is scrubbed of credentials (in any spelling) and then bounded."""
        message = summary(message, self.secrets.known_values(), 600)
        return ProviderError(self.name, kind, message, status=status, retry_after_s=retry_after_s)

    def _api_error(self, exc: Exception) -> tuple[ProviderError, bool]:
        """(the ProviderError for a client exception, whether retrying may help)."""
        import urllib3

        api_exception = self._client_mod.exceptions.ApiException
        if isinstance(exc, api_exception):
            status = int(exc.status or 0)
            reason, message = "", (exc.reason or "")
            try:
                body = json.loads(exc.body) if exc.body else None
            except (TypeError, ValueError):
                body = None
            if isinstance(body, Mapping):
                reason, message = str(body.get("reason", "")), str(body.get("message", message))
            kind = kind_for_status(status) if status else K.TRANSIENT
            if status == 403 and "exceeded quota" in message.lower():
                kind = K.QUOTA
            elif status == 409:
                kind = K.INVALID
            headers = exc.headers or {}
            retry_after = parse_retry_after(headers.get("Retry-After") if hasattr(headers, "get") else None)
            err = self.error(kind, f"HTTP {status} {reason}: {message}", status=status or None, retry_after_s=retry_after)
            return err, status == 429 or status >= 500
        if isinstance(exc, urllib3.exceptions.HTTPError):
            return self.error(K.TRANSIENT, f"API server unreachable or timed out ({type(exc).__name__})"), True
        if isinstance(exc, (ValueError, TypeError)):  # the client could not deserialize the answer
            return self.error(K.MALFORMED_RESPONSE, f"cannot parse the API server's answer ({type(exc).__name__})"), False
        raise exc

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one client call in a thread with a request timeout, retrying 429/5xx/timeouts with backoff."""
        retry = 0
        while True:
            try:
                return await asyncio.to_thread(fn, *args, _request_timeout=(min(self.timeout_s, 10.0), self.timeout_s), **kwargs)
            except Exception as exc:
                err, retryable = self._api_error(exc)
            delay = self.retry.delay(retry, err.retry_after_s) if retryable else None
            if delay is None:
                raise err
            retry += 1
            log.info("kubernetes: retry %d in %.2fs after %s", retry, delay, err)
            await asyncio.sleep(delay)

    def manifest(self, spec: LaunchSpec) -> dict[str, Any]:
        """The batch/v1 Job of one attempt: no retries (the scheduler owns restarts), GPU limits, env, deadline."""
        name = remote.run_name(spec)
        image = spec.container_image or self.image
        if not image:
            raise self.error(K.INVALID, "kubernetes needs container_image (or the setting kubernetes.image)")
        if not spec.command:
            raise self.error(K.INVALID, "command must not be empty")
        try:
            env = remote.job_env(spec)
            fetch = remote.fetch_script(spec, WORK_MOUNT) if remote.needs_fetch(spec) else ""
        except ValueError as exc:
            raise self.error(K.INVALID, str(exc)) from None
        container: dict[str, Any] = {
            "name": "main",
            "image": image,
            "command": list(spec.command),
            "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        }
        if spec.offer.gpu_count > 0:
            container["resources"] = {"limits": {self.gpu_resource: str(spec.offer.gpu_count)}}
        pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
        selector = dict(self.node_selector)
        if self.gpu_node_label and spec.offer.gpu_name:
            selector[self.gpu_node_label] = spec.offer.gpu_name
        if selector:
            pod["nodeSelector"] = selector
        if self.service_account:
            pod["serviceAccountName"] = self.service_account
        volumes: list[dict[str, Any]] = []
        mounts: list[dict[str, Any]] = []
        if fetch:  # code and inputs: an init step downloads, verifies and unpacks them into an emptyDir
            volumes.append({"name": "work", "emptyDir": {}})
            mounts.append({"name": "work", "mountPath": WORK_MOUNT})
            container["workingDir"] = WORK_MOUNT
            pod["initContainers"] = [
                {
                    "name": "fetch-code",
                    "image": image,
                    "command": ["bash", "-c", fetch],
                    "volumeMounts": [{"name": "work", "mountPath": WORK_MOUNT}],
                }
            ]
        if self.checkpoint_pvc and spec.checkpoint_dir:
            volumes.append({"name": "checkpoint", "persistentVolumeClaim": {"claimName": self.checkpoint_pvc}})
            mounts.append({"name": "checkpoint", "mountPath": spec.checkpoint_dir})
        if volumes:
            pod["volumes"] = volumes
            container["volumeMounts"] = mounts
        labels = {RUN_LABEL: name, JOB_LABEL: re.sub(r"[^A-Za-z0-9_.-]", "-", spec.job_id)[:63].strip("-_.") or "job"}
        job_spec: dict[str, Any] = {"backoffLimit": 0, "template": {"metadata": {"labels": labels}, "spec": pod}}
        if spec.max_duration_s > 0:
            job_spec["activeDeadlineSeconds"] = int(spec.max_duration_s + 0.999)
        if self.ttl_after_finished > 0:
            job_spec["ttlSecondsAfterFinished"] = self.ttl_after_finished
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "spec": job_spec,
        }

    def describe_launch(self, spec: LaunchSpec) -> LaunchPreview:
        """POST /apis/batch/v1/namespaces/{ns}/jobs with the Job manifest submit() creates (the token redacted)."""
        try:
            manifest = self.manifest(spec)
        except ProviderError as exc:
            return LaunchPreview(self.name, (), (str(exc).split(": ", 2)[-1],))
        request = {
            "method": "POST",
            "url": f"{self._host}/apis/batch/v1/namespaces/{self.namespace}/jobs",
            "headers": {"Authorization": "Bearer ***", "Content-Type": "application/json"},
            "json": manifest,
        }
        return LaunchPreview(self.name, (request,))

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """Create the Job; 409 AlreadyExists (a retried or re-attached submit) adopts the existing Job of that name."""
        manifest = self.manifest(spec)
        name = manifest["metadata"]["name"]
        body = self._client_mod.V1Job.from_dict(manifest)
        try:
            await self._call(self.batch.create_namespaced_job, self.namespace, body)
        except ProviderError as exc:
            if exc.status != 409:
                raise
            log.info("kubernetes: job %s already exists: adopting it", name)
        return RunHandle(self.name, name, {"namespace": self.namespace})

    async def find(self, spec: LaunchSpec) -> RunHandle | None:
        """The Job named crucible-<job>-<attempt> in the namespace, if it exists (re-attachment after a crash)."""
        name = remote.run_name(spec)
        try:
            await self._call(self.batch.read_namespaced_job, name, self.namespace)
        except ProviderError as exc:
            if exc.kind is K.NOT_FOUND:
                return None
            raise
        return RunHandle(self.name, name, {"namespace": self.namespace})

    async def _pods(self, handle: RunHandle) -> list[Any]:
        pods = await self._call(
            self.core.list_namespaced_pod,
            handle.data.get("namespace", self.namespace),
            label_selector=f"{RUN_LABEL}={handle.ref}",
        )
        items: list[Any] = list(pods.items or [])  # V1Pods; the API server always sets their metadata
        items.sort(key=lambda p: (p.metadata.creation_timestamp is not None, p.metadata.creation_timestamp or 0, p.metadata.name))
        return items

    @staticmethod
    def _exit_code(pod: Any) -> int | None:
        for cs in (pod.status.container_statuses or []) if pod and pod.status else []:
            if cs.name == "main" and cs.state and cs.state.terminated:
                return int(cs.state.terminated.exit_code)
        return None

    @staticmethod
    def _disrupted(pod: Any) -> str:
        if pod is None or pod.status is None:
            return ""
        for cond in pod.status.conditions or []:
            if cond.type == "DisruptionTarget" and cond.status == "True":
                return f"{cond.reason or 'disrupted'}: {cond.message or ''}".strip(": ")
        if pod.status.reason in _DISRUPTED:
            return f"{pod.status.reason}: {pod.status.message or ''}".strip(": ")
        return ""

    async def status(self, handle: RunHandle) -> RunStatus:
        """Job conditions (Complete/Failed) and the pod (phase, exit code, disruption) -> RunState."""
        namespace = handle.data.get("namespace", self.namespace)
        try:
            job = await self._call(self.batch.read_namespaced_job, handle.ref, namespace)
        except ProviderError as exc:
            if exc.kind is K.NOT_FOUND and handle.ref in self._cancelled:
                return RunStatus(RunState.CANCELLED)
            raise
        pods = await self._pods(handle)
        pod = pods[-1] if pods else None
        exit_code = self._exit_code(pod)
        disrupted = self._disrupted(pod)
        if handle.ref in self._cancelled or (job.metadata and job.metadata.deletion_timestamp):
            return RunStatus(RunState.CANCELLED, exit_code=exit_code, message="deleting")
        for cond in (job.status.conditions or []) if job.status else []:
            if cond.status != "True":
                continue
            if cond.type in ("Complete", "SuccessCriteriaMet"):
                return RunStatus(RunState.SUCCEEDED, exit_code=0 if exit_code is None else exit_code)
            if cond.type in ("Failed", "FailureTarget"):
                if disrupted:
                    return RunStatus(RunState.PREEMPTED, exit_code=exit_code, message=disrupted)
                message = f"{cond.reason or 'Failed'}: {cond.message or ''}".strip(": ")
                return RunStatus(RunState.FAILED, exit_code=exit_code, message=message)
        if pod is None:
            return RunStatus(RunState.PENDING, message="no pod yet")
        phase = pod.status.phase if pod.status else None
        if phase == "Pending":
            return RunStatus(RunState.PROVISIONING, message=self._pending_reason(pod))
        if phase == "Running":
            return RunStatus(RunState.RUNNING)
        if phase == "Succeeded":
            return RunStatus(RunState.SUCCEEDED, exit_code=0 if exit_code is None else exit_code)
        if phase == "Failed":
            if disrupted:
                return RunStatus(RunState.PREEMPTED, exit_code=exit_code, message=disrupted)
            return RunStatus(RunState.FAILED, exit_code=exit_code, message=pod.status.reason or "")
        return RunStatus(RunState.UNKNOWN, message=f"pod phase {phase!r}")

    @staticmethod
    def _pending_reason(pod: Any) -> str:
        for cond in pod.status.conditions or []:
            if cond.type == "PodScheduled" and cond.status == "False":
                return f"{cond.reason or 'unscheduled'}: {cond.message or ''}".strip(": ")
        for cs in pod.status.container_statuses or []:
            if cs.state and cs.state.waiting:
                return f"{cs.state.waiting.reason or 'waiting'}: {cs.state.waiting.message or ''}".strip(": ")
        return "pending"

    async def cancel(self, handle: RunHandle) -> None:
        """Delete the Job with Foreground propagation (its pods go first); a Job already gone counts as cancelled."""
        self._cancelled.add(handle.ref)
        try:
            await self._call(
                self.batch.delete_namespaced_job,
                handle.ref,
                handle.data.get("namespace", self.namespace),
                propagation_policy="Foreground",
            )
        except ProviderError as exc:
            if exc.kind is not K.NOT_FOUND:
                raise

    async def read_logs(self, handle: RunHandle, stream: str, offset: int) -> LogChunk:
        """The newest pod's log (stdout and stderr interleaved, as the kubelet keeps them) from byte `offset`; the API
        has no byte offset, so the whole log is fetched and cut. `stderr` is empty: it is inside `stdout`."""
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be stdout or stderr, got {stream!r}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        empty = LogChunk(stream, offset, b"", offset)
        if stream == "stderr":
            return empty
        pods = await self._pods(handle)
        if not pods:
            return empty
        try:
            response = await self._call(
                self.core.read_namespaced_pod_log,
                pods[-1].metadata.name,
                handle.data.get("namespace", self.namespace),
                container="main",
                _preload_content=False,
            )
        except ProviderError as exc:
            if exc.status == 400:  # container not started yet ("is waiting to start")
                return empty
            raise
        raw = response.data if hasattr(response, "data") else response
        data = raw.encode() if isinstance(raw, str) else bytes(raw or b"")
        data = data[offset:]
        return LogChunk(stream, offset, data, offset + len(data))

    async def aclose(self) -> None:
        """Close the client's connection pool."""
        await asyncio.to_thread(self._api_client.close)
