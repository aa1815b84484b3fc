"""Replicate adapter: trainings of a Cog trainer model via its REST API (create, get, cancel) with logs as offset chunks.

Replicate runs a trainer model's code with JSON inputs, not an arbitrary command: see README for the input mapping.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from typing import Any

from crucible.scheduler.providers.base import (
    LaunchSpec,
    LogChunk,
    ProviderCapabilities,
    ProviderError,
    RunHandle,
    RunState,
    RunStatus,
)
from crucible.scheduler.providers.base import ProviderErrorKind as K
from crucible.scheduler.providers.http import HTTPProvider, LaunchPreview, body_message, kind_for_status

INPUT_ENV = "CRUCIBLE_REPLICATE_INPUT"  # a JSON object of extra trainer inputs, taken out of the job's env
_TRAINER = re.compile(r"^(?P<owner>[A-Za-z0-9_.-]+)/(?P<name>[A-Za-z0-9_.-]+):(?P<version>[A-Za-z0-9]+)\Z")

_STATES = {
    "starting": RunState.PROVISIONING,
    "processing": RunState.RUNNING,
    "succeeded": RunState.SUCCEEDED,
    "failed": RunState.FAILED,
    "canceled": RunState.CANCELLED,
    "cancelled": RunState.CANCELLED,
}


class ReplicateProvider(HTTPProvider):
    """Replicate trainings. Settings: base_url (default https://api.replicate.com), trainer (owner/name:version, used
    when the job's container_image is not one), destination (owner/model receiving the trained version, required),
    input_field (trainer input that receives the command line; default `command`), webhook, log_chunk_bytes."""

    name = "replicate"
    secret_key = "api_token"
    default_base_url = "https://api.replicate.com"
    capabilities = ProviderCapabilities(spot=False, live_logs=True, artifacts=False)

    def __init__(self, settings: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(settings, **kwargs)
        s = self.settings
        self.trainer = s.str("trainer")
        if self.trainer and not _TRAINER.match(self.trainer):
            raise ValueError(f"replicate.trainer: must be owner/name:version, got {self.trainer!r}")
        self.destination = s.str("destination")
        self.input_field = s.str("input_field", "command")
        self.webhook = s.str("webhook")
        self.log_chunk_bytes = s.int("log_chunk_bytes", 1 << 20, minimum=1)

    @staticmethod
    def map_error(status: int, body: Any, text: str) -> tuple[K, str]:
        """Replicate errors are problem+json {title, detail, status}; 402 is billing (QUOTA), 422 invalid input."""
        message = body_message(body) or text[:300]
        kind = kind_for_status(status)
        low = message.lower()
        if status == 422 or status == 400:
            kind = K.QUOTA if ("billing" in low or "spend limit" in low) else K.INVALID
        return kind, message

    def training_input(self, spec: LaunchSpec) -> dict[str, Any]:
        """The trainer's input: {input_field: the shell-quoted command} plus the JSON object in env CRUCIBLE_REPLICATE_INPUT."""
        if not spec.command:
            raise self.error(K.INVALID, "command must not be empty")
        inputs: dict[str, Any] = {}
        raw = spec.env.get(INPUT_ENV)
        if raw:
            try:
                extra = json.loads(raw)
            except ValueError:
                raise self.error(K.INVALID, f"env {INPUT_ENV} is not valid JSON") from None
            if not isinstance(extra, dict):
                raise self.error(K.INVALID, f"env {INPUT_ENV} must be a JSON object")
            inputs.update(extra)
        inputs[self.input_field] = shlex.join(spec.command)
        return inputs

    def _launch_plan(self, spec: LaunchSpec) -> tuple[str, str, dict[str, Any], list[str]]:
        """(trainer, path, body, problems) of the training create call for `spec`."""
        problems: list[str] = []
        if spec.code_dir is not None:
            problems.append(
                "replicate runs a trainer model (its inputs are the command, not a program), so the job's "
                "code cannot run there: use lambda, runpod, paperspace, kubernetes, modal or local"
            )
        if spec.input_urls:
            problems.append(
                "replicate runs a trainer model: the job's inputs cannot be staged there (pass URLs as trainer inputs instead)"
            )
        trainer = spec.container_image if _TRAINER.match(spec.container_image or "") else self.trainer
        match = _TRAINER.match(trainer or "")
        path = "/v1/models/<owner>/<name>/versions/<version>/trainings"
        if match is None:
            problems.append("no trainer: set container_image or replicate.trainer to owner/name:version")
        else:
            path = f"/v1/models/{match['owner']}/{match['name']}/versions/{match['version']}/trainings"
        if not self.destination:
            problems.append("setting replicate.destination (owner/model) is required")
        body: dict[str, Any] = {"destination": self.destination, "input": {}}
        try:
            body["input"] = self.training_input(spec)
        except ProviderError as exc:
            problems.append(str(exc).split(": ", 2)[-1])  # without the "replicate: invalid: " prefix
        if self.webhook:
            body["webhook"] = self.webhook
        return trainer, path, body, problems

    def describe_launch(self, spec: LaunchSpec) -> LaunchPreview:
        """The training create call exactly as submit() sends it (the token redacted)."""
        _trainer, path, body, problems = self._launch_plan(spec)
        return LaunchPreview(self.name, (self.preview_request("POST", path, body),), tuple(problems))

    async def submit(self, spec: LaunchSpec) -> RunHandle:
        """POST /v1/models/{owner}/{name}/versions/{version}/trainings {destination, input, webhook}."""
        trainer, path, body, problems = self._launch_plan(spec)
        self.refuse(problems)
        answer = await self.http.request("POST", path, json_body=body, idempotent=False)
        ident = answer.get("id") if isinstance(answer, Mapping) else None
        if not isinstance(ident, str) or not ident:
            raise self.error(K.MALFORMED_RESPONSE, "training create answered no id")
        return RunHandle(self.name, ident, {"trainer": trainer, "destination": self.destination})

    async def _training(self, handle: RunHandle) -> Mapping[str, Any]:
        answer = await self.http.request("GET", f"/v1/trainings/{handle.ref}")
        if not isinstance(answer, Mapping) or not isinstance(answer.get("status"), str):
            raise self.error(K.MALFORMED_RESPONSE, "training lacks status")
        return answer

    async def status(self, handle: RunHandle) -> RunStatus:
        """GET /v1/trainings/{id}: starting -> PROVISIONING, processing -> RUNNING, succeeded/failed/canceled."""
        training = await self._training(handle)
        state = _STATES.get(training["status"])
        if state is None:
            raise self.error(K.MALFORMED_RESPONSE, f"unknown training status {training['status']!r}")
        error = training.get("error")
        message = str(error) if error else ""
        metrics = training.get("metrics")
        if isinstance(metrics, Mapping) and isinstance(metrics.get("predict_time"), (int, float)):
            message = (message + "; " if message else "") + f"predict_time {metrics['predict_time']:.1f}s"
        exit_code = 0 if state is RunState.SUCCEEDED else None  # Replicate reports no exit status for failures
        return RunStatus(state, exit_code=exit_code, message=message)

    async def cancel(self, handle: RunHandle) -> None:
        """POST /v1/trainings/{id}/cancel; a training already finished or gone is left as it is."""
        self._cancelled.add(handle.ref)
        try:
            await self.http.request("POST", f"/v1/trainings/{handle.ref}/cancel")
        except ProviderError as exc:
            if exc.kind is not K.NOT_FOUND:
                raise

    async def read_logs(self, handle: RunHandle, stream: str, offset: int) -> LogChunk:
        """The training's `logs` (full text so far) cut into offset-based chunks; Replicate has one merged stream
        reported as stdout, so stderr is always empty."""
        if stream not in ("stdout", "stderr"):
            raise ValueError(f"stream must be stdout or stderr, got {stream!r}")
        if offset < 0:
            raise ValueError(f"offset must be >= 0, got {offset}")
        if stream == "stderr":
            return LogChunk(stream, offset, b"", offset)
        training = await self._training(handle)
        logs = training.get("logs") or ""
        if not isinstance(logs, str):
            raise self.error(K.MALFORMED_RESPONSE, "training logs is not a string")
        data = logs.encode()[offset : offset + self.log_chunk_bytes]
        return LogChunk(stream, offset, data, offset + len(data))
