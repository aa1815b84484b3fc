"""The console's ASGI app (Starlette): static pages, a JSON API over the SDK, and server-sent events for live views.

Every mesh call goes through crucible.clients (token, TLS, retries, deadlines); this module only translates HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import shlex
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import grpc
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from crucible.clients.mesh import Mesh, MeshConfig
from crucible.clients.offers import group_offers
from crucible.console import streams
from crucible.console.archive import ArchiveError, check_archive, pack_folder
from crucible.console.config import ConsoleConfig
from crucible.console.httpkit import (
    MAX_JSON_BYTES,
    MAX_JSON_DEPTH,
    SECURITY_HEADERS,
    BadInput,
    allowed_hosts,
    b64_archive,
    error_response,
    grpc_error,
    job_id_param,
    json_depth,
    jsonable,
    names_param,
    number_param,
    safe_next,
    seconds_json,
    text_param,
)
from crucible.console.sessions import COOKIE, CSRF_COOKIE, CSRF_HEADER, MAX_COOKIE_CHARS, Session, Sessions

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
JOB_STATES = ("pending", "provisioning", "running", "recovering", "succeeded", "failed", "cancelling", "cancelled")
TERMINAL = {"succeeded", "failed", "cancelled"}
POLICIES = ("cheapest", "fastest", "explicit", "ordered")


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
                    response: Response = error_response(403, "PERMISSION_DENIED", "cross-origin request refused")
                elif mutating and not self.sessions.csrf_ok(session, request.headers.get(CSRF_HEADER)):
                    response = error_response(
                        403, "PERMISSION_DENIED", f"missing or wrong {CSRF_HEADER} header (reload the page)"
                    )
                elif auth and await self.sessions.login_required() and not self.sessions.logged_in(session):
                    response = error_response(401, "UNAUTHENTICATED", "the mesh needs a token: log in first")
                else:
                    response = await handler(request, session, self.sessions.mesh_for(session))
            except BadInput as err:
                response = error_response(400, "INVALID_ARGUMENT", str(err), [(err.field, err.message)])
            except grpc.aio.AioRpcError as err:
                response = grpc_error(err)
            except json_format.ParseError as err:  # a value the contract has no name for (an enum, a number)
                response = error_response(400, "INVALID_ARGUMENT", str(err)[:300])
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
        token = text_param(body, "token", max_chars=4096)
        target = safe_next(body.get("next"))
        created = await self.sessions.login(session, token)
        if created is None:
            return error_response(401, "UNAUTHENTICATED", "the token was not accepted")
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
        hours = number_param(q, "hours", default=1.0, low=0.0, high=24 * 365)
        fields: dict[str, Any] = {
            "requirements": {
                "gpu_names": names_param(q, "gpu_names"),
                "gpu_count": int(number_param(q, "gpu_count", default=1, high=64, integer=True) or 0),
                "min_gpu_memory_gib": number_param(q, "min_gpu_memory_gib", default=0.0, high=4096),
            },
            "duration": seconds_json((hours or 0) * 3600),
            "providers": names_param(q, "providers"),
            "spot_allowed": q.get("spot") in ("1", "true", "on"),
            "objective": {"cheapest": "OBJECTIVE_CHEAPEST", "fastest": "OBJECTIVE_FASTEST"}.get(
                q.get("objective", "cheapest"), "OBJECTIVE_CHEAPEST"
            ),
            "storage_gb_hours": number_param(q, "storage_gb_hours", default=0.0, high=1e7),
            "reference_gpu_name": text_param(q, "reference_gpu_name", max_chars=64),
        }
        max_cost = number_param(q, "max_cost_usd", high=1e7)
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
        offer_id = text_param(q, "offer_id", max_chars=300)
        if not offer_id:
            raise BadInput("offer_id", "is required")
        low = number_param(q, "hours_low", default=1.0, high=24 * 365) or 0.0
        high = number_param(q, "hours_high", default=low, high=24 * 365) or 0.0
        if high < low:
            raise BadInput("hours_high", "must not be below hours_low")
        reply = await mesh.cost.estimate_cost(
            offer_id, hours_range=(low, high), storage_gb_hours=number_param(q, "storage_gb_hours", default=0.0, high=1e7) or 0.0
        )
        return JSONResponse(jsonable(reply))

    async def requirements(self, request: Request, session: Session, mesh: Mesh) -> Response:
        body = await self._json_body(request)
        fields: dict[str, Any] = {
            "workload": {"training": "WORKLOAD_KIND_TRAINING", "inference": "WORKLOAD_KIND_INFERENCE"}.get(
                str(body.get("workload", "training")), "WORKLOAD_KIND_UNSPECIFIED"
            ),
            "batch_size": int(number_param(body, "batch_size", default=1, low=1, high=1 << 20, integer=True) or 1),
            "block_size": int(number_param(body, "block_size", default=0, high=1 << 24, integer=True) or 0),
            "precision": "PRECISION_" + text_param(body, "precision", max_chars=20, default="fp32").upper(),
            "optimizer": "OPTIMIZER_" + text_param(body, "optimizer", max_chars=20, default="adamw").upper(),
        }
        if body.get("parameter_count") not in (None, ""):
            fields["parameter_count"] = str(int(number_param(body, "parameter_count", low=1, high=1e15, integer=True) or 0))
        else:
            fields["transformer"] = {
                k: int(number_param(body, k, default=0, low=0, high=1 << 24, integer=True) or 0)
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
        states = names_param(q, "state", max_items=len(JOB_STATES))
        bad = [s for s in states if s not in JOB_STATES]
        if bad:
            raise BadInput("state", f"unknown state {bad[0]!r}; one of {', '.join(JOB_STATES)}")
        jobs, token = await mesh.scheduler.list_jobs(
            states=[f"JOB_STATE_{s.upper()}" for s in states],
            providers=names_param(q, "provider"),
            page_size=int(number_param(q, "page_size", default=50, low=1, high=200, integer=True) or 50),
            page_token=text_param(q, "page_token", max_chars=200),
            budget_scope=text_param(q, "scope", max_chars=200),
        )
        return JSONResponse({"jobs": jsonable(jobs), "next_page_token": token})

    async def _spec(self, form: Any) -> tuple[dict[str, Any], bytes | None]:
        command_text = text_param(form, "command", max_chars=4000)
        try:
            command = shlex.split(command_text)
        except ValueError as err:
            raise BadInput("command", f"cannot be split into arguments: {err}") from None
        if not command:
            raise BadInput("command", "is required")
        policy = text_param(form, "policy", max_chars=20, default="cheapest") or "cheapest"
        if policy not in POLICIES:
            raise BadInput("policy", f"one of {', '.join(POLICIES)}")
        spec: dict[str, Any] = {
            "display_name": text_param(form, "name"),
            "command": command,
            "provider_policy": f"PROVIDER_POLICY_{policy.upper()}",
            "providers": names_param(form, "providers"),
            "spot_allowed": form.get("spot") in ("1", "true", "on"),
            "budget_scope": text_param(form, "scope", max_chars=200),
            "resources": {
                "gpu_names": names_param(form, "gpu_names"),
                "gpu_count": int(number_param(form, "gpu_count", default=0, high=64, integer=True) or 0),
                "min_gpu_memory_gib": number_param(form, "min_gpu_memory_gib", default=0.0, high=4096),
            },
        }
        for field, name in (("expected_duration", "expected_minutes"), ("max_duration", "max_minutes")):
            minutes = number_param(form, name, low=0.0, high=60 * 24 * 365)
            if minutes:
                spec[field] = seconds_json(minutes * 60)
        for field, name in (("max_cost_usd", "max_cost_usd"), ("max_price_usd_per_hour", "max_price_usd_per_hour")):
            value = number_param(form, name, high=1e7)
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
            return error_response(411, "INVALID_ARGUMENT", "a Content-Length header is required")
        if int(length) > limit:
            return error_response(
                413,
                "INVALID_ARGUMENT",
                f"the upload is larger than {limit:,} bytes",
                [("code_archive", f"at most {self.config.max_upload_bytes:,} bytes")],
            )
        async with request.form(max_files=2000, max_fields=100, max_part_size=64 * 1024) as form:
            spec, code = await self._spec(form)
            validate_only = form.get("validate_only") in ("1", "true", "on")
            no_code = form.get("no_code") in ("1", "true", "on")
            request_id = text_param(form, "request_id", max_chars=128) or uuid.uuid4().hex
        if code is None and not no_code and not validate_only:  # an estimate may come before the code is chosen
            raise BadInput(
                "code_archive",
                "no code to run: upload a .zip or .tar.gz or a folder, or set no_code when the command needs no files",
            )
        if code is not None:
            spec["code_archive"] = code
        job = await mesh.scheduler.create_job(
            b64_archive(spec), request_id="" if validate_only else request_id, validate_only=validate_only
        )
        return JSONResponse(jsonable(job))

    async def get_job(self, request: Request, session: Session, mesh: Mesh) -> Response:
        return JSONResponse(jsonable(await mesh.scheduler.get_job(job_id_param(request))))

    async def cancel_job(self, request: Request, session: Session, mesh: Mesh) -> Response:
        job = await mesh.scheduler.cancel_job(job_id_param(request), reason="cancelled from the web console")
        return JSONResponse(jsonable(job))

    async def delete_job(self, request: Request, session: Session, mesh: Mesh) -> Response:
        """DeleteJob: an ended job's record, progress, folder and stored objects (409 while it has not ended)."""
        job_id = job_id_param(request)
        removed = await mesh.scheduler.delete_job(job_id)
        return JSONResponse({"job_id": job_id, "deleted": True, "objects_deleted": removed})

    async def progress(self, request: Request, session: Session, mesh: Mesh) -> Response:
        q = request.query_params
        points, nxt, resume = await mesh.scheduler.list_progress(
            job_id_param(request),
            page_size=int(number_param(q, "page_size", default=1000, low=1, high=1000, integer=True) or 1000),
            page_token=text_param(q, "page_token", max_chars=200),
        )
        return JSONResponse({"points": jsonable(points), "next_page_token": nxt, "resume_page_token": resume})

    async def artifacts(self, request: Request, session: Session, mesh: Mesh) -> Response:
        return JSONResponse(jsonable(await mesh.scheduler.list_artifacts(job_id_param(request))))

    # --- budgets ------------------------------------------------------------------------------------------------

    async def budgets(self, request: Request, session: Session, mesh: Mesh) -> Response:
        scope = text_param(request.query_params, "scope", max_chars=200)
        return JSONResponse(jsonable(await streams.all_budgets(mesh, scope)))

    async def create_budget(self, request: Request, session: Session, mesh: Mesh) -> Response:
        body = await self._json_body(request)
        enforcement = text_param(body, "enforcement", max_chars=10, default="soft") or "soft"
        if enforcement not in ("soft", "hard"):
            raise BadInput("enforcement", "soft or hard")
        thresholds = body.get("alert_thresholds_percent") or []
        if not isinstance(thresholds, list) or len(thresholds) > 20:
            raise BadInput("alert_thresholds_percent", "a list of at most 20 percentages")
        budget = await mesh.cost.create_budget(
            scope=text_param(body, "scope", max_chars=200),
            display_name=text_param(body, "display_name"),
            limit_usd=number_param(body, "limit_usd", default=0.0, high=1e9),
            alert_thresholds_percent=[number_param({"t": t}, "t", high=100) for t in thresholds],
            enforcement=f"BUDGET_ENFORCEMENT_{enforcement.upper()}",
            request_id=uuid.uuid4().hex,
        )
        return JSONResponse(jsonable(budget))

    # --- app ----------------------------------------------------------------------------------------------------

    def routes(self) -> list[Any]:
        a = self.api
        log_cap = self.config.max_log_bytes_per_event
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
            Route("/api/jobs/{job_id}/events", a(streams.job_events)),
            Route("/api/jobs/{job_id}/logs", a(functools.partial(streams.log_events, max_bytes_per_event=log_cap))),
            Route("/api/jobs/{job_id}/artifacts", a(self.artifacts)),
            Route("/api/jobs/{job_id}/download", a(streams.download)),
            Route("/api/budgets", a(self.budgets)),
            Route("/api/budgets", a(self.create_budget, mutating=True), methods=["POST"]),
            Route("/api/budgets/events", a(streams.budget_events)),
            Mount("/static", StaticFiles(directory=self.static_dir), name="static"),
        ]


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
