"""The console's ASGI app (Starlette): static pages, a JSON API over the SDK, and server-sent events for live views.

Every mesh call goes through crucible.clients (token, TLS, retries, deadlines); this module only translates HTTP.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import math
import re
import shlex
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import grpc
from google.protobuf import json_format
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from crucible.api.scheduler.v1 import scheduler_service_pb2 as scheduler_pb
from crucible.clients.mesh import Mesh, MeshConfig
from crucible.clients.offers import group_offers
from crucible.console.archive import ArchiveError, check_archive, pack_folder
from crucible.console.config import ConsoleConfig
from crucible.console.sessions import COOKIE, CSRF_COOKIE, CSRF_HEADER, MAX_COOKIE_CHARS, Session, Sessions
from crucible.runtime.errors import parse_status_details

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
CHART_ASSET = "vendor/uPlot.iife.min.js"
PAGES = {
    "/providers": "providers.html",
    "/submit": "submit.html",
    "/jobs": "jobs.html",
    "/budgets": "budgets.html",
    "/login": "login.html",
}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
HTTP_OF_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
JOB_STATES = ("pending", "provisioning", "running", "recovering", "succeeded", "failed", "cancelling", "cancelled")
TERMINAL = {"succeeded", "failed", "cancelled"}
POLICIES = ("cheapest", "fastest", "explicit", "ordered")
MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32  # the console's JSON bodies are flat objects; deeper nesting is refused before parsing
MAX_NEXT_CHARS = 2000
DOWNLOAD_TIMEOUT_S = 24 * 3600.0
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c|[01][0-9a-f]|7f)", re.IGNORECASE)  # an encoded slash, backslash or control
MAX_WATCHED_BUDGETS = 50


class BadInput(Exception):
    """A request field the console refuses before calling the mesh (HTTP 400 naming the field)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def jsonable(value: Any) -> Any:
    """SDK dataclasses to JSON: datetimes as RFC 3339, durations as seconds, non-finite floats as null."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: jsonable(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not isinstance(getattr(value, f.name), bytes)
        }
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _error(status: int, code: str, message: str, fields: list[tuple[str, str]] | None = None, reason: str = "") -> JSONResponse:
    body = {
        "error": {
            "code": code,
            "message": message,
            "reason": reason,
            "fields": [{"field": f, "description": d} for f, d in fields or []],
        }
    }
    return JSONResponse(body, status_code=status, headers=SECURITY_HEADERS)


def grpc_error(err: grpc.aio.AioRpcError) -> JSONResponse:
    info, violations = parse_status_details(err)
    return _error(
        HTTP_OF_GRPC.get(err.code(), 502),
        err.code().name,
        err.details() or err.code().name,
        violations,
        info.reason if info else "",
    )


def _number(
    params: Any, name: str, *, default: float | None = None, low: float = 0.0, high: float = 1e9, integer: bool = False
) -> float | None:
    raw = params.get(name)
    if raw is None or str(raw).strip() == "":
        return default
    text = str(raw).strip()
    if len(text) > 32:
        raise BadInput(name, "is too long")
    try:
        value = int(text) if integer else float(text)
    except ValueError:
        raise BadInput(name, "must be a number" if not integer else "must be a whole number") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise BadInput(name, f"must be between {low:g} and {high:g}")
    return value


def _text(params: Any, name: str, *, max_chars: int = 200, default: str = "") -> str:
    raw = params.get(name)
    if raw is None:
        return default
    if not isinstance(raw, str):
        raise BadInput(name, "must be text")
    if len(raw) > max_chars:
        raise BadInput(name, f"at most {max_chars} characters")
    return raw.strip()


def _names(params: Any, name: str, *, max_items: int = 16) -> list[str]:
    raw = _text(params, name, max_chars=1000)
    items = [x.strip() for x in raw.replace(";", ",").split(",") if x.strip()]
    if len(items) > max_items:
        raise BadInput(name, f"at most {max_items} entries")
    if any(len(x) > 64 for x in items):
        raise BadInput(name, "each entry at most 64 characters")
    return items


def _seconds(value: float) -> str:
    return f"{value:.3f}s"


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in a JSON text, counted without parsing it (strings skipped)."""
    depth = deepest = 0
    for match in _JSON_BRACKET.finditer(_JSON_STRING.sub('""', text)):
        if match.group() in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def safe_next(raw: object) -> str:
    """Where to go after login: a path on this console, parsed as a URL; anything else (another host, a scheme, a
    backslash, whitespace or control characters a browser strips or rewrites, their percent-encoded forms, non-ASCII)
    gives "/"."""
    if not isinstance(raw, str) or not raw or len(raw) > MAX_NEXT_CHARS:
        return "/"
    if any(not 0x21 <= ord(c) <= 0x7E for c in raw) or "\\" in raw or _ENCODED_SEPARATOR.search(raw):
        return "/"
    if not raw.startswith("/") or raw.startswith("//"):  # "//host" and "///host" are another site to a browser
        return "/"
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return "/"
    return urlunsplit(("", "", parts.path, parts.query, parts.fragment))


def _attachment(name: str) -> str:
    """A Content-Disposition header for a download named `name` (RFC 6266; non-ASCII and quotes percent-encoded)."""
    encoded = quote(name, safe="")
    return f'attachment; filename="{name}"' if encoded == name else f"attachment; filename*=utf-8''{encoded}"


class Console:
    """The app's state: config, sessions (and their meshes); handlers are its methods."""

    def __init__(self, config: ConsoleConfig, mesh_config: MeshConfig, static_dir: Path = STATIC_DIR) -> None:
        self.config = config
        self.sessions = Sessions(mesh_config, max_sessions=config.max_sessions, ttl_s=config.session_ttl_s)
        self.static_dir = static_dir

    @property
    def chart_available(self) -> bool:
        return (self.static_dir / CHART_ASSET).is_file()

    # --- plumbing -----------------------------------------------------------------------------------------------

    def _session(self, request: Request) -> tuple[Session, str]:
        """The browser's session: its stored one after a login, else an unstored anonymous one (nothing kept here).

        The second value is a new CSRF cookie to set ("" when the browser already has one)."""
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is not None:
            return session, ""
        nonce = request.cookies.get(CSRF_COOKIE) or ""
        fresh = ""
        if not 32 <= len(nonce) <= MAX_COOKIE_CHARS:
            nonce = fresh = self.sessions.new_nonce()
        return self.sessions.anonymous(nonce), fresh

    def _set_cookie(self, response: Response, name: str, value: str, request: Request) -> None:
        response.set_cookie(
            name,
            value,
            httponly=True,
            samesite="strict",
            path="/",
            secure=request.url.scheme == "https",
            max_age=int(self.config.session_ttl_s),
        )

    @staticmethod
    def _same_origin(request: Request) -> bool:
        """Mutating calls must come from our own pages: Origin (or Referer) equal to this host, never cross-site."""
        site = request.headers.get("sec-fetch-site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = request.headers.get("origin") or request.headers.get("referer")
        if not origin:
            return site is not None  # a browser that sends neither Origin nor Referer still says Sec-Fetch-Site
        parts = urlsplit(origin)
        return f"{parts.scheme}://{parts.netloc}" == f"{request.url.scheme}://{request.url.netloc}"

    def api(
        self, handler: Callable[..., Awaitable[Response]], *, mutating: bool = False, auth: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        """Wrap a handler with the session, the CSRF and origin checks, the login check and error mapping."""

        async def endpoint(request: Request) -> Response:
            session, fresh = self._session(request)
            try:
                if mutating and not self._same_origin(request):
                    response: Response = _error(403, "PERMISSION_DENIED", "cross-origin request refused")
                elif mutating and not self.sessions.csrf_ok(session, request.headers.get(CSRF_HEADER)):
                    response = _error(403, "PERMISSION_DENIED", f"missing or wrong {CSRF_HEADER} header (reload the page)")
                elif auth and await self.sessions.login_required() and not self.sessions.logged_in(session):
                    response = _error(401, "UNAUTHENTICATED", "the mesh needs a token: log in first")
                else:
                    response = await handler(request, session, self.sessions.mesh_for(session))
            except BadInput as err:
                response = _error(400, "INVALID_ARGUMENT", str(err), [(err.field, err.message)])
            except grpc.aio.AioRpcError as err:
                response = grpc_error(err)
            except json_format.ParseError as err:  # a value the contract has no name for (an enum, a number)
                response = _error(400, "INVALID_ARGUMENT", str(err)[:300])
            if fresh:
                self._set_cookie(response, CSRF_COOKIE, fresh, request)
            return response

        return endpoint

    async def _json_body(self, request: Request) -> dict[str, Any]:
        length = request.headers.get("content-length")
        if length is None or not length.isdigit() or int(length) > MAX_JSON_BYTES:
            raise BadInput("body", f"a JSON object with a Content-Length of at most {MAX_JSON_BYTES} bytes")
        raw = await request.body()
        if len(raw) > MAX_JSON_BYTES:
            raise BadInput("body", f"a JSON object of at most {MAX_JSON_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput("body", "is not UTF-8") from None
        if json_depth(text) > MAX_JSON_DEPTH:  # json.loads recurses per level: bound the depth before parsing
            raise BadInput("body", f"nests arrays or objects more than {MAX_JSON_DEPTH} deep")
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise BadInput("body", "is not valid JSON") from None
        if not isinstance(data, dict):
            raise BadInput("body", "must be a JSON object")
        return data

    # --- pages ------------------------------------------------------------------------------------------------------

    async def page(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        name = "job.html" if path.startswith("/jobs/") else PAGES.get(path)
        if name is None:
            return RedirectResponse("/jobs", status_code=302)
        session, fresh = self._session(request)
        if name != "login.html" and await self.sessions.login_required() and not self.sessions.logged_in(session):
            response: Response = RedirectResponse("/login?next=" + quote(path, safe="/"), status_code=302)
        else:
            response = FileResponse(self.static_dir / name, headers=SECURITY_HEADERS, media_type="text/html")
        if fresh:
            self._set_cookie(response, CSRF_COOKIE, fresh, request)
        return response

    async def favicon(self, request: Request) -> Response:
        return FileResponse(
            self.static_dir / "favicon.ico", media_type="image/x-icon", headers={"cache-control": "max-age=86400"}
        )

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "chart_available": self.chart_available})

    # --- session ------------------------------------------------------------------------------------------------

    async def session_info(self, request: Request, session: Session, mesh: Mesh) -> Response:
        required = await self.sessions.login_required()
        return JSONResponse(
            {
                "csrf_token": session.csrf,
                "login_required": required,
                "logged_in": self.sessions.logged_in(session),
                "chart_available": self.chart_available,
                "max_upload_bytes": self.config.max_upload_bytes,
            },
            headers=SECURITY_HEADERS,
        )

    async def login(self, request: Request, session: Session, mesh: Mesh) -> Response:
        """Check the token; on success a new session (the only place one is made) and where to go next."""
        body = await self._json_body(request)
        token = _text(body, "token", max_chars=4096)
        target = safe_next(body.get("next"))
        created = await self.sessions.login(session, token)
        if created is None:
            return _error(401, "UNAUTHENTICATED", "the token was not accepted")
        response = JSONResponse({"logged_in": True, "redirect": target})
        self._set_cookie(response, COOKIE, created.sid, request)
        return response

    async def logout(self, request: Request, session: Session, mesh: Mesh) -> Response:
        await self.sessions.logout(session)
        response = JSONResponse({"logged_in": False})
        response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
        return response

    # --- providers and estimates --------------------------------------------------------------------------------

    async def compare(self, request: Request, session: Session, mesh: Mesh) -> Response:
        q = request.query_params
        hours = _number(q, "hours", default=1.0, low=0.0, high=24 * 365)
        fields: dict[str, Any] = {
            "requirements": {
                "gpu_names": _names(q, "gpu_names"),
                "gpu_count": int(_number(q, "gpu_count", default=1, high=64, integer=True) or 0),
                "min_gpu_memory_gib": _number(q, "min_gpu_memory_gib", default=0.0, high=4096),
            },
            "duration": _seconds((hours or 0) * 3600),
            "providers": _names(q, "providers"),
            "spot_allowed": q.get("spot") in ("1", "true", "on"),
            "objective": {"cheapest": "OBJECTIVE_CHEAPEST", "fastest": "OBJECTIVE_FASTEST"}.get(
                q.get("objective", "cheapest"), "OBJECTIVE_CHEAPEST"
            ),
            "storage_gb_hours": _number(q, "storage_gb_hours", default=0.0, high=1e7),
            "reference_gpu_name": _text(q, "reference_gpu_name", max_chars=64),
        }
        max_cost = _number(q, "max_cost_usd", high=1e7)
        if max_cost is not None:
            fields["max_cost_usd"] = max_cost
        reply = await mesh.cost.compare_providers(**fields)
        groups = group_offers(reply.offers, reply.recommended_offer_id)  # one row per provider x GPU type (SDK rule)
        return JSONResponse(
            {
                "recommended_offer_id": reply.recommended_offer_id,
                "recommendation_reason": reply.recommendation_reason,
                "assumptions": list(reply.assumptions),
                "offer_count": len(reply.offers),
                "groups": [_group_json(g) for g in groups],
            }
        )

    async def estimate(self, request: Request, session: Session, mesh: Mesh) -> Response:
        q = request.query_params
        offer_id = _text(q, "offer_id", max_chars=300)
        if not offer_id:
            raise BadInput("offer_id", "is required")
        low = _number(q, "hours_low", default=1.0, high=24 * 365) or 0.0
        high = _number(q, "hours_high", default=low, high=24 * 365) or 0.0
        if high < low:
            raise BadInput("hours_high", "must not be below hours_low")
        reply = await mesh.cost.estimate_cost(
            offer_id, hours_range=(low, high), storage_gb_hours=_number(q, "storage_gb_hours", default=0.0, high=1e7) or 0.0
        )
        return JSONResponse(jsonable(reply))

    async def requirements(self, request: Request, session: Session, mesh: Mesh) -> Response:
        body = await self._json_body(request)
        fields: dict[str, Any] = {
            "workload": {"training": "WORKLOAD_KIND_TRAINING", "inference": "WORKLOAD_KIND_INFERENCE"}.get(
                str(body.get("workload", "training")), "WORKLOAD_KIND_UNSPECIFIED"
            ),
            "batch_size": int(_number(body, "batch_size", default=1, low=1, high=1 << 20, integer=True) or 1),
            "block_size": int(_number(body, "block_size", default=0, high=1 << 24, integer=True) or 0),
            "precision": "PRECISION_" + _text(body, "precision", max_chars=20, default="fp32").upper(),
            "optimizer": "OPTIMIZER_" + _text(body, "optimizer", max_chars=20, default="adamw").upper(),
        }
        if body.get("parameter_count") not in (None, ""):
            fields["parameter_count"] = str(int(_number(body, "parameter_count", low=1, high=1e15, integer=True) or 0))
        else:
            fields["transformer"] = {
                k: int(_number(body, k, default=0, low=0, high=1 << 24, integer=True) or 0)
                for k in ("n_layer", "n_head", "n_embd", "vocab_size")
            }
            fields["transformer"]["block_size"] = fields["block_size"]
        reply = await mesh.scheduler.estimate_requirements(fields)
        return JSONResponse(jsonable(reply))

    async def scheduler_providers(self, request: Request, session: Session, mesh: Mesh) -> Response:
        return JSONResponse(jsonable(await mesh.scheduler.list_providers()))

    # --- jobs ---------------------------------------------------------------------------------------------------

    async def list_jobs(self, request: Request, session: Session, mesh: Mesh) -> Response:
        q = request.query_params
        states = _names(q, "state", max_items=len(JOB_STATES))
        bad = [s for s in states if s not in JOB_STATES]
        if bad:
            raise BadInput("state", f"unknown state {bad[0]!r}; one of {', '.join(JOB_STATES)}")
        jobs, token = await mesh.scheduler.list_jobs(
            states=[f"JOB_STATE_{s.upper()}" for s in states],
            providers=_names(q, "provider"),
            page_size=int(_number(q, "page_size", default=50, low=1, high=200, integer=True) or 50),
            page_token=_text(q, "page_token", max_chars=200),
            budget_scope=_text(q, "scope", max_chars=200),
        )
        return JSONResponse({"jobs": jsonable(jobs), "next_page_token": token})

    async def _spec(self, form: Any) -> tuple[dict[str, Any], bytes | None]:
        command_text = _text(form, "command", max_chars=4000)
        try:
            command = shlex.split(command_text)
        except ValueError as err:
            raise BadInput("command", f"cannot be split into arguments: {err}") from None
        if not command:
            raise BadInput("command", "is required")
        policy = _text(form, "policy", max_chars=20, default="cheapest") or "cheapest"
        if policy not in POLICIES:
            raise BadInput("policy", f"one of {', '.join(POLICIES)}")
        spec: dict[str, Any] = {
            "display_name": _text(form, "name"),
            "command": command,
            "provider_policy": f"PROVIDER_POLICY_{policy.upper()}",
            "providers": _names(form, "providers"),
            "spot_allowed": form.get("spot") in ("1", "true", "on"),
            "budget_scope": _text(form, "scope", max_chars=200),
            "resources": {
                "gpu_names": _names(form, "gpu_names"),
                "gpu_count": int(_number(form, "gpu_count", default=0, high=64, integer=True) or 0),
                "min_gpu_memory_gib": _number(form, "min_gpu_memory_gib", default=0.0, high=4096),
            },
        }
        for field, name in (("expected_duration", "expected_minutes"), ("max_duration", "max_minutes")):
            minutes = _number(form, name, low=0.0, high=60 * 24 * 365)
            if minutes:
                spec[field] = _seconds(minutes * 60)
        for field, name in (("max_cost_usd", "max_cost_usd"), ("max_price_usd_per_hour", "max_price_usd_per_hour")):
            value = _number(form, name, high=1e7)
            if value is not None:
                spec[field] = value
        return spec, await self._code(form)

    async def _code(self, form: Any) -> bytes | None:
        """The job's code as archive bytes: an uploaded zip/tar.gz, or the files of an uploaded folder packed here."""
        limit = self.config.max_upload_bytes
        archive = form.get("code_archive")
        files = [f for f in form.getlist("code_files") if hasattr(f, "read")]
        if archive is not None and hasattr(archive, "read") and archive.filename:
            if files:
                raise BadInput("code_files", "give either an archive or a folder, not both")
            if archive.size is not None and archive.size > limit:
                raise BadInput("code_archive", f"is larger than the console's limit of {limit:,} bytes")
            data = await archive.read(limit + 1)
            if len(data) > limit:
                raise BadInput("code_archive", f"is larger than the console's limit of {limit:,} bytes")
            try:
                await asyncio.to_thread(check_archive, data)
            except ArchiveError as err:
                raise BadInput("code_archive", str(err)) from None
            return data
        if files:
            try:
                return await pack_folder(files, limit)
            except ArchiveError as err:
                raise BadInput("code_files", str(err)) from None
        return None

    async def create_job(self, request: Request, session: Session, mesh: Mesh) -> Response:
        length = request.headers.get("content-length")
        limit = self.config.max_upload_bytes + 1024 * 1024  # the archive plus the form's text fields
        if length is None or not length.isdigit():
            return _error(411, "INVALID_ARGUMENT", "a Content-Length header is required")
        if int(length) > limit:
            return _error(
                413,
                "INVALID_ARGUMENT",
                f"the upload is larger than {limit:,} bytes",
                [("code_archive", f"at most {self.config.max_upload_bytes:,} bytes")],
            )
        async with request.form(max_files=2000, max_fields=100, max_part_size=64 * 1024) as form:
            spec, code = await self._spec(form)
            validate_only = form.get("validate_only") in ("1", "true", "on")
            no_code = form.get("no_code") in ("1", "true", "on")
            request_id = _text(form, "request_id", max_chars=128) or uuid.uuid4().hex
        if code is None and not no_code and not validate_only:  # an estimate may come before the code is chosen
            raise BadInput(
                "code_archive",
                "no code to run: upload a .zip or .tar.gz or a folder, or set no_code when the command needs no files",
            )
        if code is not None:
            spec["code_archive"] = code
        job = await mesh.scheduler.create_job(
            _b64_archive(spec), request_id="" if validate_only else request_id, validate_only=validate_only
        )
        return JSONResponse(jsonable(job))

    async def get_job(self, request: Request, session: Session, mesh: Mesh) -> Response:
        return JSONResponse(jsonable(await mesh.scheduler.get_job(_job_id(request))))

    async def cancel_job(self, request: Request, session: Session, mesh: Mesh) -> Response:
        job = await mesh.scheduler.cancel_job(_job_id(request), reason="cancelled from the web console")
        return JSONResponse(jsonable(job))

    async def delete_job(self, request: Request, session: Session, mesh: Mesh) -> Response:
        """DeleteJob: an ended job's record, progress, folder and stored objects (409 while it has not ended)."""
        job_id = _job_id(request)
        removed = await mesh.scheduler.delete_job(job_id)
        return JSONResponse({"job_id": job_id, "deleted": True, "objects_deleted": removed})

    async def progress(self, request: Request, session: Session, mesh: Mesh) -> Response:
        q = request.query_params
        points, nxt, resume = await mesh.scheduler.list_progress(
            _job_id(request),
            page_size=int(_number(q, "page_size", default=1000, low=1, high=1000, integer=True) or 1000),
            page_token=_text(q, "page_token", max_chars=200),
        )
        return JSONResponse({"points": jsonable(points), "next_page_token": nxt, "resume_page_token": resume})

    async def artifacts(self, request: Request, session: Session, mesh: Mesh) -> Response:
        return JSONResponse(jsonable(await mesh.scheduler.list_artifacts(_job_id(request))))

    async def download(self, request: Request, session: Session, mesh: Mesh) -> Response:
        """Relay DownloadArtifact's chunks to the browser as they come: nothing on disk, one chunk held at a time.

        The first chunk is awaited before answering, so a missing file or a refused path is a plain HTTP error. The
        last chunk is held back until the SHA-256 the scheduler sends matches; on a mismatch or a broken stream the
        response is cut short (the browser sees an incomplete download, never a silently wrong file). When the browser
        goes away the gRPC stream is cancelled."""
        job_id = _job_id(request)
        path = _text(request.query_params, "path", max_chars=1000)
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
            return _error(502, "INTERNAL", f"the scheduler sent no data for {path!r}")
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
            "content-disposition": _attachment(name),
        }
        return _RelayResponse(relay(), call, headers=headers, media_type="application/octet-stream")

    async def job_events(self, request: Request, session: Session, mesh: Mesh) -> Response:
        """SSE: `job` snapshots from WatchJob and, after each, the `progress` points stored since the last ones."""
        job_id = _job_id(request)
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
                yield _failure(err)
                return
            yield {"event": "end", "data": json.dumps({"state": last.state})}

        return EventSourceResponse(events(), ping=15, headers={"cache-control": "no-store"})

    async def log_events(self, request: Request, session: Session, mesh: Mesh) -> Response:
        """SSE of the job's output (follow): `log` events {stream, text, offset, next_offset}; resumes from Last-Event-ID."""
        job_id = _job_id(request)
        await mesh.scheduler.get_job(job_id)
        offsets = {"stdout": 0, "stderr": 0}
        last_id = request.headers.get("last-event-id", "")
        if last_id:
            parts = last_id.split(":")
            if len(parts) == 2 and all(p.isdigit() and len(p) < 20 for p in parts):
                offsets = {"stdout": int(parts[0]), "stderr": int(parts[1])}
        cap = self.config.max_log_bytes_per_event

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
                            "data": json.dumps(
                                {"stream": chunk.stream, "text": text[i : i + cap], "next_offset": chunk.next_offset}
                            ),
                        }
            except grpc.aio.AioRpcError as err:  # the browser reconnects from the last event id
                yield _failure(err)
                return
            yield {"event": "end", "data": "{}"}

        return EventSourceResponse(events(), ping=15, headers={"cache-control": "no-store"})

    # --- budgets ------------------------------------------------------------------------------------------------

    async def budgets(self, request: Request, session: Session, mesh: Mesh) -> Response:
        scope = _text(request.query_params, "scope", max_chars=200)
        return JSONResponse(jsonable(await _all_budgets(mesh, scope)))

    async def create_budget(self, request: Request, session: Session, mesh: Mesh) -> Response:
        body = await self._json_body(request)
        enforcement = _text(body, "enforcement", max_chars=10, default="soft") or "soft"
        if enforcement not in ("soft", "hard"):
            raise BadInput("enforcement", "soft or hard")
        thresholds = body.get("alert_thresholds_percent") or []
        if not isinstance(thresholds, list) or len(thresholds) > 20:
            raise BadInput("alert_thresholds_percent", "a list of at most 20 percentages")
        budget = await mesh.cost.create_budget(
            scope=_text(body, "scope", max_chars=200),
            display_name=_text(body, "display_name"),
            limit_usd=_number(body, "limit_usd", default=0.0, high=1e9),
            alert_thresholds_percent=[_number({"t": t}, "t", high=100) for t in thresholds],
            enforcement=f"BUDGET_ENFORCEMENT_{enforcement.upper()}",
            request_id=uuid.uuid4().hex,
        )
        return JSONResponse(jsonable(budget))

    async def budget_events(self, request: Request, session: Session, mesh: Mesh) -> Response:
        """SSE: one WatchBudget per budget (the first MAX_WATCHED_BUDGETS), merged: `budget` and `alert` events."""
        budgets = (await _all_budgets(mesh, ""))[:MAX_WATCHED_BUDGETS]

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
                        yield _failure(reply)
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

    # --- app ----------------------------------------------------------------------------------------------------

    def routes(self) -> list[Any]:
        a = self.api
        return [
            Route("/", self.page),
            Route("/favicon.ico", self.favicon),
            *(Route(p, self.page) for p in PAGES),
            Route("/jobs/{job_id}", self.page),
            Route("/healthz", self.healthz),
            Route("/api/session", a(self.session_info, auth=False)),
            Route("/api/login", a(self.login, mutating=True, auth=False), methods=["POST"]),
            Route("/api/logout", a(self.logout, mutating=True, auth=False), methods=["POST"]),
            Route("/api/compare", a(self.compare)),
            Route("/api/estimate", a(self.estimate)),
            Route("/api/requirements", a(self.requirements), methods=["POST"]),
            Route("/api/scheduler/providers", a(self.scheduler_providers)),
            Route("/api/jobs", a(self.list_jobs)),
            Route("/api/jobs", a(self.create_job, mutating=True), methods=["POST"]),
            Route("/api/jobs/{job_id}", a(self.get_job)),
            Route("/api/jobs/{job_id}/cancel", a(self.cancel_job, mutating=True), methods=["POST"]),
            Route("/api/jobs/{job_id}/delete", a(self.delete_job, mutating=True), methods=["POST"]),
            Route("/api/jobs/{job_id}/progress", a(self.progress)),
            Route("/api/jobs/{job_id}/events", a(self.job_events)),
            Route("/api/jobs/{job_id}/logs", a(self.log_events)),
            Route("/api/jobs/{job_id}/artifacts", a(self.artifacts)),
            Route("/api/jobs/{job_id}/download", a(self.download)),
            Route("/api/budgets", a(self.budgets)),
            Route("/api/budgets", a(self.create_budget, mutating=True), methods=["POST"]),
            Route("/api/budgets/events", a(self.budget_events)),
            Mount("/static", StaticFiles(directory=self.static_dir), name="static"),
        ]


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


def _failure(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """An SSE `failure` event for a stream the mesh broke off (the page shows it; EventSource then reconnects)."""
    log.info("stream ended by the mesh: %s %s", err.code().name, err.details())
    return {"event": "failure", "data": json.dumps({"code": err.code().name, "message": err.details() or ""})}


def _group_json(group: Any) -> dict[str, Any]:
    """One provider x GPU type row of the Providers page: its best offer, the regions at that price, every member."""
    return {
        "provider": group.provider,
        "gpu_name": group.gpu_name,
        "gpu_count": group.gpu_count,
        "spot": group.spot,
        "recommended": group.recommended,
        "best": jsonable(group.best),
        "regions": list(group.regions),
        "regions_at_price": group.regions_at_price,
        "region_count": group.region_count,
        "members": jsonable(list(group.members)),
    }


def _job_id(request: Request) -> str:
    job_id = request.path_params["job_id"]
    if not job_id or len(job_id) > 128:
        raise BadInput("job_id", "1 to 128 characters")
    return job_id


def _b64_archive(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec in protobuf JSON form: bytes fields are base64."""
    if isinstance(spec.get("code_archive"), bytes):
        import base64

        spec = {**spec, "code_archive": base64.b64encode(spec["code_archive"]).decode()}
    return spec


async def _all_budgets(mesh: Mesh, scope: str) -> list[Any]:
    out: list[Any] = []
    token = ""
    for _ in range(20):  # at most 20 pages of 100
        budgets, token = await mesh.cost.list_budgets(scope=scope, page_token=token)
        out.extend(budgets)
        if not token:
            break
    return out


def allowed_hosts(host: str) -> list[str]:
    """Host headers the console answers (DNS-rebinding guard): loopback names, plus the bind address when specific."""
    hosts = ["127.0.0.1", "localhost", "[::1]", "::1"]
    if host not in ("0.0.0.0", "::", ""):
        hosts.append(host)
    else:
        hosts = ["*"]  # listening on every interface: the operator chose to expose it (put a proxy in front)
    return hosts


def create_app(config: ConsoleConfig, mesh_config: MeshConfig | None = None, *, static_dir: Path = STATIC_DIR) -> Starlette:
    """The console app; its mesh clients close when the app shuts down."""
    console = Console(config, mesh_config or MeshConfig.from_env(), static_dir)

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if not console.chart_available:
            log.warning(
                "chart library %s not built (run `make console-assets`); job pages show a notice instead",
                static_dir / CHART_ASSET,
            )
        yield
        await console.sessions.close()

    import contextlib

    app = Starlette(
        routes=console.routes(),
        lifespan=contextlib.asynccontextmanager(lifespan),
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(config.host))],
    )
    app.state.console = console
    return app
