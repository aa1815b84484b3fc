"""The console's live views: server-sent events of a job, its output and the budgets, and the artifact download relay.

Each handler takes (request, session, mesh) like the console's others; a stream the mesh breaks off ends in a `failure` event.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from sse_starlette.sse import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from crucible.api.scheduler.v1 import scheduler_service_pb2 as scheduler_pb
from crucible.clients.mesh import Mesh
from crucible.console.httpkit import SECURITY_HEADERS, BadInput, attachment, error_response, job_id_param, jsonable, text_param
from crucible.console.sessions import Session

log = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 24 * 3600.0
MAX_WATCHED_BUDGETS = 50


async def download(request: Request, session: Session, mesh: Mesh) -> Response:
    """Relay DownloadArtifact's chunks to the browser as they come: nothing on disk, one chunk held at a time.

    The first chunk is awaited before answering, so a missing file or a refused path is a plain HTTP error. The
    last chunk is held back until the SHA-256 the scheduler sends matches; on a mismatch or a broken stream the
    response is cut short (the browser sees an incomplete download, never a silently wrong file). When the browser
    goes away the gRPC stream is cancelled."""
    job_id = job_id_param(request)
    path = text_param(request.query_params, "path", max_chars=1000)
    if not path:
        raise BadInput("path", "is required")
    call = mesh.scheduler.stub.DownloadArtifact(
        scheduler_pb.DownloadArtifactRequest(job_id=job_id, path=path), timeout=DOWNLOAD_TIMEOUT_S
    )
    chunks = call.__aiter__()
    try:
        first = await chunks.__anext__()
    except StopAsyncIteration:
        call.cancel()
        return error_response(502, "INTERNAL", f"the scheduler sent no data for {path!r}")
    except BaseException:
        call.cancel()
        raise
    name = path.rsplit("/", 1)[-1] or "artifact"

    async def relay() -> AsyncIterator[bytes]:
        digest = hashlib.sha256()
        held = first
        while True:
            try:
                nxt = await chunks.__anext__()
            except StopAsyncIteration:
                break
            digest.update(held.data)
            yield held.data
            held = nxt
        digest.update(held.data)
        if held.sha256 and held.sha256 != digest.hexdigest():
            log.warning("artifact %s of job %s: checksum mismatch; download cut short", path, job_id)
            raise ChecksumMismatch(f"artifact {path} of job {job_id}: checksum mismatch")
        yield held.data

    headers = {
        **SECURITY_HEADERS,
        "content-length": str(first.total_size_bytes),
        "content-disposition": attachment(name),
    }
    return _RelayResponse(relay(), call, headers=headers, media_type="application/octet-stream")


async def job_events(request: Request, session: Session, mesh: Mesh) -> Response:
    """SSE: `job` snapshots from WatchJob and, after each, the `progress` points stored since the last ones."""
    job_id = job_id_param(request)
    first = await mesh.scheduler.get_job(job_id)  # NOT_FOUND as a plain HTTP error, before the stream starts

    async def events() -> AsyncIterator[dict[str, str]]:
        yield {"event": "reset", "data": "{}"}
        token = ""
        last = first
        try:
            async for job in mesh.scheduler.watch_job(job_id, timeout=7 * 24 * 3600):
                last = job
                yield {"event": "job", "data": json.dumps(jsonable(job))}
                while True:
                    points, nxt, token = await mesh.scheduler.list_progress(job_id, page_size=1000, page_token=token)
                    if points:
                        yield {"event": "progress", "data": json.dumps(jsonable(points))}
                    if not nxt:
                        break
        except grpc.aio.AioRpcError as err:  # the browser reconnects (and starts over with `reset`)
            yield failure_event(err)
            return
        yield {"event": "end", "data": json.dumps({"state": last.state})}

    return EventSourceResponse(events(), ping=15, headers={"cache-control": "no-store"})


async def log_events(request: Request, session: Session, mesh: Mesh, *, max_bytes_per_event: int) -> Response:
    """SSE of the job's output (follow): `log` events {stream, text, offset, next_offset}; resumes from Last-Event-ID."""
    job_id = job_id_param(request)
    await mesh.scheduler.get_job(job_id)
    offsets = {"stdout": 0, "stderr": 0}
    last_id = request.headers.get("last-event-id", "")
    if last_id:
        parts = last_id.split(":")
        if len(parts) == 2 and all(p.isdigit() and len(p) < 20 for p in parts):
            offsets = {"stdout": int(parts[0]), "stderr": int(parts[1])}
    cap = max_bytes_per_event

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            async for chunk in mesh.scheduler.logs(
                job_id, follow=True, stdout_offset=offsets["stdout"], stderr_offset=offsets["stderr"], timeout=7 * 24 * 3600
            ):
                offsets[chunk.stream] = chunk.next_offset
                text = chunk.text
                for i in range(0, max(len(text), 1), cap):
                    yield {
                        "event": "log",
                        "id": f"{offsets['stdout']}:{offsets['stderr']}",
                        "data": json.dumps({"stream": chunk.stream, "text": text[i : i + cap], "next_offset": chunk.next_offset}),
                    }
        except grpc.aio.AioRpcError as err:  # the browser reconnects from the last event id
            yield failure_event(err)
            return
        yield {"event": "end", "data": "{}"}

    return EventSourceResponse(events(), ping=15, headers={"cache-control": "no-store"})


async def budget_events(request: Request, session: Session, mesh: Mesh) -> Response:
    """SSE: one WatchBudget per budget (the first MAX_WATCHED_BUDGETS), merged: `budget` and `alert` events."""
    budgets = (await all_budgets(mesh, ""))[:MAX_WATCHED_BUDGETS]

    async def events() -> AsyncIterator[dict[str, str]]:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1000)

        async def watch(budget_id: str) -> None:
            try:
                async for reply in mesh.cost.watch_budget(budget_id, timeout=7 * 24 * 3600):
                    await queue.put(reply)
            except grpc.aio.AioRpcError as err:
                await queue.put(err)

        tasks = [asyncio.create_task(watch(b.budget_id)) for b in budgets]
        waiting = {b.budget_id for b in budgets}  # `ready` once every watch has sent its first state
        if not waiting:
            yield {"event": "ready", "data": "{}"}
        try:
            while True:
                reply = await queue.get()
                if isinstance(reply, grpc.aio.AioRpcError):
                    yield failure_event(reply)
                    return  # the browser reconnects and watches again
                yield {"event": "budget", "data": json.dumps(jsonable(reply.budget))}
                if reply.alert is not None:
                    yield {"event": "alert", "data": json.dumps(jsonable(reply.alert))}
                if waiting:
                    waiting.discard(reply.budget.budget_id)
                    if not waiting:
                        yield {"event": "ready", "data": "{}"}
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    return EventSourceResponse(events(), ping=15, headers={"cache-control": "no-store"})


class ChecksumMismatch(Exception):
    """The bytes relayed do not hash to the SHA-256 the scheduler sent: the download is cut short."""


class _RelayResponse(StreamingResponse):
    """A streamed response tied to a gRPC call: the call is cancelled however the response ends (sent, broken off by
    the browser, or failed), so an abandoned download stops reading on the scheduler too."""

    def __init__(self, content: AsyncIterator[bytes], call: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._call = call

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._call.cancel()
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def failure_event(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """An SSE `failure` event for a stream the mesh broke off (the page shows it; EventSource then reconnects)."""
    log.info("stream ended by the mesh: %s %s", err.code().name, err.details())
    return {"event": "failure", "data": json.dumps({"code": err.code().name, "message": err.details() or ""})}


async def all_budgets(mesh: Mesh, scope: str) -> list[Any]:
    out: list[Any] = []
    token = ""
    for _ in range(20):  # at most 20 pages of 100
        budgets, token = await mesh.cost.list_budgets(scope=scope, page_token=token)
        out.extend(budgets)
        if not token:
            break
    return out
