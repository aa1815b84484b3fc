"""A minimal asyncio HTTP/1.1 server on 127.0.0.1:0 with scriptable faults, the base of every provider fake.

Faults: an HTTP status with Retry-After, 5xx, a hang (the client times out), a malformed body, a dropped connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any


@dataclasses.dataclass
class Request:
    """One request as the fake saw it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lowercase names
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body or b"null")

    def arg(self, name: str, default: str = "") -> str:
        """The first value of a query parameter."""
        return self.query.get(name, [default])[0]


@dataclasses.dataclass
class Response:
    """What a handler answers."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        """A JSON answer."""
        return cls(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})})


@dataclasses.dataclass
class Fault:
    """A scripted misbehaviour for matching requests. `after=True` runs the real handler first (the side effect
    happens) and then misbehaves, as when a launch succeeds but its answer is lost."""

    status: int | None = None
    body: bytes = b""
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    hang_s: float = 0.0
    drop: bool = False
    after: bool = False

    @classmethod
    def rate_limited(cls, retry_after: str | None = "0", body: bytes = b'{"error": "rate limited"}') -> Fault:
        """HTTP 429 with a Retry-After header."""
        return cls(429, body, {"Retry-After": retry_after} if retry_after is not None else {})

    @classmethod
    def server_error(cls, status: int = 503, body: bytes = b"upstream unavailable") -> Fault:
        """HTTP 5xx with a non-JSON body."""
        return cls(status, body)

    @classmethod
    def hang(cls, seconds: float = 30.0, after: bool = False) -> Fault:
        """Accept the request and answer nothing for `seconds`."""
        return cls(hang_s=seconds, after=after)

    @classmethod
    def malformed(cls, body: bytes = b'{"data": [unterminated', status: int = 200) -> Fault:
        """A 200 whose body is not JSON."""
        return cls(status, body, {"Content-Type": "application/json"})

    @classmethod
    def dropped(cls) -> Fault:
        """Close the connection without answering."""
        return cls(drop=True)


Handler = Callable[[Request], Awaitable[Response] | Response]


class FakeServer:
    """Serves `handler` on 127.0.0.1:<free port>; records every request; applies queued faults first."""

    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._server: asyncio.Server | None = None
        self._faults: list[list[Any]] = []  # [method or None, path substring, Fault, remaining]
        self._tasks: set[asyncio.Task] = set()
        self.requests: list[Request] = []
        self.port = 0

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT"""
        return f"http://127.0.0.1:{self.port}"

    def fault(self, fault: Fault, *, path: str = "", method: str | None = None, times: int = 1) -> None:
        """Apply `fault` to the next `times` requests whose path contains `path` (and method matches)."""
        self._faults.append([method, path, fault, times])

    def count(self, method: str, path: str) -> int:
        """How many requests with this method had this path substring."""
        return sum(1 for r in self.requests if r.method == method and path in r.path)

    async def start(self) -> FakeServer:
        """Listen on 127.0.0.1:0."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        """Stop listening and cancel hung connections."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _take_fault(self, request: Request) -> Fault | None:
        for entry in self._faults:
            method, path, fault, remaining = entry
            if remaining > 0 and (method is None or method == request.method) and path in request.path:
                entry[3] -= 1
                return fault
        return None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                request = await self._read(reader)
                if request is None:
                    return
                self.requests.append(request)
                keep = await self._answer(request, writer)
                if not keep:
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # client went away, or the fake is closing: a cancelled connection task ends quietly
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _answer(self, request: Request, writer: asyncio.StreamWriter) -> bool:
        fault = self._take_fault(request)
        response: Response | None = None
        if fault is None or fault.after:
            result = self._handler(request)
            response = await result if asyncio.iscoroutine(result) else result  # type: ignore[assignment]
        if fault is not None:
            if fault.hang_s:
                await asyncio.sleep(fault.hang_s)
                return False
            if fault.drop:
                return False
            if fault.status is not None:
                response = Response(fault.status, fault.body, dict(fault.headers))
        assert response is not None
        head = [f"HTTP/1.1 {response.status} X", f"Content-Length: {len(response.body)}"]
        headers = {"Content-Type": "application/json", **response.headers}
        head += [f"{k}: {v}" for k, v in headers.items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + response.body)
        await writer.drain()
        return True

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> Request | None:
        line = await reader.readline()
        if not line.strip():
            return None
        method, target, _ = line.decode().split(" ", 2)
        headers: dict[str, str] = {}
        while True:
            h = await reader.readline()
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = b""
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int((await reader.readline()).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        parts = urllib.parse.urlsplit(target)
        return Request(method, urllib.parse.unquote(parts.path), urllib.parse.parse_qs(parts.query), headers, body)


def bearer_ok(request: Request, key: str) -> bool:
    """Whether the request carries `Authorization: Bearer <key>`."""
    return request.headers.get("authorization", "") == f"Bearer {key}"
