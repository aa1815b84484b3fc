"""Browser sessions of the console: created only at login, held in an HttpOnly SameSite=Strict cookie, bounded.

Anonymous browsers hold no server state: their CSRF token is an HMAC of a random cookie, so no request evicts a session.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import hashlib
import hmac
import logging
import secrets
import time

import grpc

from crucible.clients.mesh import Mesh, MeshConfig

log = logging.getLogger(__name__)

COOKIE = "crucible_console"
CSRF_COOKIE = "crucible_console_csrf"
CSRF_HEADER = "x-csrf-token"
MAX_TOKEN_CHARS = 4096
MAX_COOKIE_CHARS = 128
PROBE_TTL_S = 15.0


@dataclasses.dataclass
class Session:
    """One browser: its CSRF token, the mesh token it logged in with and its own mesh clients then.

    A stored session (`sid` set) exists only after a login; an anonymous browser gets an unstored one (`sid` empty)
    whose CSRF token is derived from its CSRF cookie."""

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
        self._csrf_key = secrets.token_bytes(32)  # per process: a restart asks pages to reload

    def get(self, sid: str | None) -> Session | None:
        """The live (logged-in) session with this id, refreshed; None when unknown or expired."""
        if not sid or len(sid) > MAX_COOKIE_CHARS:
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

    def anonymous(self, nonce: str) -> Session:
        """The unstored session of a browser that has not logged in: its CSRF token is an HMAC of its CSRF cookie."""
        csrf = hmac.new(self._csrf_key, nonce.encode(), hashlib.sha256).hexdigest()
        return Session("", csrf, time.monotonic())

    @staticmethod
    def new_nonce() -> str:
        """A fresh value for the CSRF cookie of an anonymous browser."""
        return secrets.token_urlsafe(32)

    def _store(self, token: str, mesh: Mesh | None) -> Session:
        """A new session for a successful login; the least recently used one goes when there are too many."""
        while len(self._sessions) >= self.max_sessions:
            self._drop(next(iter(self._sessions)))
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), time.monotonic(), token, mesh)
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

    async def login(self, previous: Session, token: str) -> Session | None:
        """Check a token (against the console's own, or by one call to the mesh with it); a new session when accepted.

        A session is only ever created here, so requests without a valid login cannot push others out. The previous
        session of the browser, if any, ends (a fresh id at each login)."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        if self.configured_token:
            if not hmac.compare_digest(self.configured_token.encode(), token.encode()):
                return None
            mesh = None
        else:
            mesh = Mesh(
                MeshConfig({name: dataclasses.replace(cfg, token=token) for name, cfg in self.mesh_config.services.items()})
            )
            try:
                await mesh.scheduler.list_providers(timeout=10)
            except grpc.aio.AioRpcError as err:
                await mesh.close()
                if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
                    return None
                raise
        if previous.sid:
            await self.logout(previous)
        return self._store(token, mesh)

    async def logout(self, session: Session) -> None:
        """End a stored session (its mesh clients close); an anonymous one has nothing to end."""
        self._sessions.pop(session.sid, None)
        if session.mesh is not None:
            await session.mesh.close()
        session.token, session.mesh = "", None

    def __len__(self) -> int:
        return len(self._sessions)

    def mesh_for(self, session: Session) -> Mesh:
        """The clients this session's calls go through."""
        return session.mesh or self.shared

    async def close(self) -> None:
        for session in list(self._sessions.values()):
            if session.mesh is not None:
                await session.mesh.close()
        self._sessions.clear()
        await self.shared.close()
