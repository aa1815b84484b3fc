"""HTTP plumbing of the web console: bounded request parsing (fields, numbers, JSON bodies, redirects) and responses.

Every value from the browser is bounded here before the console calls the mesh; gRPC statuses map to HTTP ones here.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import grpc
from starlette.requests import Request
from starlette.responses import JSONResponse

from crucible.clients.status import parse_status_details

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
MAX_JSON_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32  # the console's JSON bodies are flat objects; deeper nesting is refused before parsing
MAX_NEXT_CHARS = 2000
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")
_ENCODED_SEPARATOR = re.compile(r"%(?:2f|5c|[01][0-9a-f]|7f)", re.IGNORECASE)  # an encoded slash, backslash or control


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


def error_response(
    status: int, code: str, message: str, fields: list[tuple[str, str]] | None = None, reason: str = ""
) -> JSONResponse:
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
    return error_response(
        HTTP_OF_GRPC.get(err.code(), 502),
        err.code().name,
        err.details() or err.code().name,
        violations,
        info.reason if info else "",
    )


def number_param(
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


def text_param(params: Any, name: str, *, max_chars: int = 200, default: str = "") -> str:
    raw = params.get(name)
    if raw is None:
        return default
    if not isinstance(raw, str):
        raise BadInput(name, "must be text")
    if len(raw) > max_chars:
        raise BadInput(name, f"at most {max_chars} characters")
    return raw.strip()


def names_param(params: Any, name: str, *, max_items: int = 16) -> list[str]:
    raw = text_param(params, name, max_chars=1000)
    items = [x.strip() for x in raw.replace(";", ",").split(",") if x.strip()]
    if len(items) > max_items:
        raise BadInput(name, f"at most {max_items} entries")
    if any(len(x) > 64 for x in items):
        raise BadInput(name, "each entry at most 64 characters")
    return items


def seconds_json(value: float) -> str:
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


def attachment(name: str) -> str:
    """A Content-Disposition header for a download named `name` (RFC 6266; non-ASCII and quotes percent-encoded)."""
    encoded = quote(name, safe="")
    return f'attachment; filename="{name}"' if encoded == name else f"attachment; filename*=utf-8''{encoded}"


def job_id_param(request: Request) -> str:
    job_id = request.path_params["job_id"]
    if not job_id or len(job_id) > 128:
        raise BadInput("job_id", "1 to 128 characters")
    return job_id


def b64_archive(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec in protobuf JSON form: bytes fields are base64."""
    if isinstance(spec.get("code_archive"), bytes):
        import base64

        spec = {**spec, "code_archive": base64.b64encode(spec["code_archive"]).decode()}
    return spec


def allowed_hosts(host: str) -> list[str]:
    """Host headers the console answers (DNS-rebinding guard): loopback names, plus the bind address when specific."""
    hosts = ["127.0.0.1", "localhost", "[::1]", "::1"]
    if host not in ("0.0.0.0", "::", ""):
        hosts.append(host)
    else:
        hosts = ["*"]  # listening on every interface: the operator chose to expose it (put a proxy in front)
    return hosts
