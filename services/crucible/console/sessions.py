"""Browser sessions of the console: an opaque id in an HttpOnly SameSite=Strict cookie, a CSRF token, and the mesh.

A token a user logs in with stays on the server (in the session); pages only ever see whether they are logged in.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hmac
import logging
import secrets
import time

import grpc

from crucible.clients.mesh import Mesh, MeshConfig

log = logging.getLogger(__name__)

COOKIE = "crucible_console"
CSRF_HEADER = "x-csrf-token"
MAX_TOKEN_CHARS = 4096
PROBE_TTL_S = 15.0


@dataclasses.dataclass
class Session:
    """One browser: its CSRF token, the mesh token it logged in with (if any) and its own mesh clients then."""

    sid: str
    csrf: str
    last_seen: float
    token: str = ""
    mesh: Mesh | None = None  # only for a token given at login; otherwise the console's shared mesh is used


class Sessions:
    """Sessions in memory (bounded, least recently used dropped), and whether the mesh wants a token."""

    def __init__(self, mesh_config: MeshConfig, *, max_sessions: int, ttl_s: float) -> None:
        self.mesh_config = mesh_config
        self.shared = Mesh(mesh_config)
        self.configured_token = mesh_config.services["scheduler"].token
        self.max_sessions = max_sessions
        self.ttl_s = ttl_s
        self._sessions: collections.OrderedDict[str, Session] = collections.OrderedDict()
        self._probe: tuple[float, bool] | None = None

    def get(self, sid: str | None) -> Session | None:
        """The live session with this id, refreshed; None when unknown or expired."""
        if not sid or len(sid) > 128:
            return None
        session = self._sessions.get(sid)
        now = time.monotonic()
        if session is None or now - session.last_seen > self.ttl_s:
            if session is not None:
                self._drop(sid)
            return None
        session.last_seen = now
        self._sessions.move_to_end(sid)
        return session

    def create(self) -> Session:
        """A new anonymous session; the least recently used one goes when there are too many."""
        while len(self._sessions) >= self.max_sessions:
            self._drop(next(iter(self._sessions)))
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.monotonic())
        self._sessions[session.sid] = session
        return session

    def _drop(self, sid: str) -> None:
        session = self._sessions.pop(sid, None)
        if session is not None and session.mesh is not None:
            asyncio.get_event_loop().create_task(session.mesh.close())

    @staticmethod
    def csrf_ok(session: Session, header: str | None) -> bool:
        """Double submit: the header must carry the session's CSRF token (constant-time comparison)."""
        return bool(header) and hmac.compare_digest(session.csrf.encode(), (header or "").encode())

    async def login_required(self) -> bool:
        """True when the console holds a mesh token, or when the mesh refuses calls without one (probed, cached)."""
        if self.configured_token:
            return True
        now = time.monotonic()
        if self._probe is not None and now - self._probe[0] < PROBE_TTL_S:
            return self._probe[1]
        try:
            await self.shared.scheduler.list_providers(timeout=5)
            required = False
        except grpc.aio.AioRpcError as err:
            required = err.code() == grpc.StatusCode.UNAUTHENTICATED
            if not required:  # the mesh is down or broken: pages show its error; ask again in a couple of seconds
                self._probe = (now - PROBE_TTL_S + 2.0, False)
                return False
        self._probe = (now, required)
        return required

    def logged_in(self, session: Session) -> bool:
        return bool(session.token)

    async def login(self, session: Session, token: str) -> bool:
        """Check a token: against the console's own (when configured) or by one call to the mesh with it."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return False
        if self.configured_token:
            ok = hmac.compare_digest(self.configured_token.encode(), token.encode())
            if ok:
                session.token = token
            return ok
        mesh = Mesh(MeshConfig({name: dataclasses.replace(cfg, token=token) for name, cfg in self.mesh_config.services.items()}))
        try:
            await mesh.scheduler.list_providers(timeout=10)
        except grpc.aio.AioRpcError as err:
            await mesh.close()
            if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                return False
            raise
        if session.mesh is not None:
            await session.mesh.close()
        session.token, session.mesh = token, mesh
        return True

    async def logout(self, session: Session) -> None:
        if session.mesh is not None:
            await session.mesh.close()
        session.token, session.mesh = "", None

    def mesh_for(self, session: Session) -> Mesh:
        """The clients this session's calls go through."""
        return session.mesh or self.shared

    async def close(self) -> None:
        for session in list(self._sessions.values()):
            if session.mesh is not None:
                await session.mesh.close()
        self._sessions.clear()
        await self.shared.close()
