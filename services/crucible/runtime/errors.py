"""Domain errors and their one mapping to gRPC status codes with google.rpc ErrorInfo/BadRequest details.

Core code raises these (no grpc import needed there); the runtime interceptor turns them into statuses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

# Client side, kept in the SDK (which never imports the servers); re-exported here for the servers and their tests.
from crucible.clients.status import parse_status_details as parse_status_details

#: Most characters of a caller's value that an error quotes (see `echo`): an oversized id or name is shown as a prefix.
ECHO_CHARS = 64
#: Most characters of an error message, of one field violation (its field path and its description) or of one
#: ErrorInfo metadata value; anything longer is cut where the error is built, whatever code built it.
MAX_ERROR_CHARS = 1024


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """A caller's value quoted for an error message: repr() of it, cut after `limit` characters with its length said."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def bounded(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    """`text` cut to at most `limit` characters, the cut marked with the full length."""
    if len(text) <= limit:
        return text
    note = f"... [{len(text)} characters]"
    return text[: max(0, limit - len(note))] + note


class CrucibleError(Exception):
    """Base of every error that is the caller's to see; `code` and `reason` say what kind it is.

    The message and metadata values are cut to MAX_ERROR_CHARS here, so no handler can echo a megabyte back.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_reason: str = "UNKNOWN"

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        message = bounded(message)
        super().__init__(message)
        self.message = message
        self.reason = bounded(reason or self.default_reason, 128)
        self.metadata = {bounded(str(k), 128): bounded(str(v)) for k, v in (metadata or {}).items()}


class InvalidArgument(CrucibleError):
    """The request is malformed; `field_violations` names each offending field (e.g. 'texts[3]')."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        message: str,
        *,
        field_violations: Sequence[tuple[str, str]] = (),
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.field_violations = [(bounded(f, 256), bounded(d)) for f, d in field_violations]

    @classmethod
    def field(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        """One bad field: the message reads '<field>: <description>'."""
        return cls(f"{field}: {description}", field_violations=[(field, description)], reason=reason)


class NotFound(CrucibleError):
    """A named resource (job, budget, offer, model) does not exist."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(CrucibleError):
    """A resource with that identity exists and the request may not replace it."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(CrucibleError):
    """The system is not in a state that allows the request (e.g. cancelling a finished job, a hard budget)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class OutOfRange(CrucibleError):
    """A value is past the valid range of the resource (e.g. an offset past the end of a log)."""

    code = grpc.StatusCode.OUT_OF_RANGE
    default_reason = "OUT_OF_RANGE"


class ResourceExhausted(CrucibleError):
    """Overload: a queue or quota is full; retry later with backoff."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(CrucibleError):
    """The service is not ready (models loading) or is shutting down; safe to retry."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(CrucibleError):
    """The call's deadline passed before its work was done."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unauthenticated(CrucibleError):
    """No valid credentials were sent."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(CrucibleError):
    """Valid credentials that do not allow this call."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unimplemented(CrucibleError):
    """The method exists in the contract but this server does not serve it."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "NOT_IMPLEMENTED"


class ConfigError(ValueError):
    """A configuration setting is invalid; raised at start-up, never over the wire."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


_ERROR_DOMAIN_SUFFIX = "crucible"


def error_domain(service: str) -> str:
    """ErrorInfo.domain for a service, e.g. 'detector.crucible' (AIP-193 style: the service that raised it)."""
    return f"{service}.{_ERROR_DOMAIN_SUFFIX}" if service else _ERROR_DOMAIN_SUFFIX


def to_status(error: CrucibleError, domain: str) -> grpc.Status:
    """Build the rich status: code, message, ErrorInfo(reason, domain, metadata) and BadRequest for invalid fields."""
    detail = status_pb2.Status(code=getattr(code_pb2, error.code.name), message=error.message)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    detail.details.add().Pack(info)
    if isinstance(error, InvalidArgument) and error.field_violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d) for f, d in error.field_violations
            ]
        )
        detail.details.add().Pack(bad)
    status: grpc.Status = rpc_status.to_status(detail)
    return status


def internal_status(domain: str, request_id: str) -> grpc.Status:
    """The last-resort status for an unexpected exception: no internals leak, the request id ties it to the log."""
    detail = status_pb2.Status(
        code=code_pb2.INTERNAL, message=f"internal error (request id {request_id}); the server log has the details"
    )
    detail.details.add().Pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=domain, metadata={"request_id": request_id}))
    status: grpc.Status = rpc_status.to_status(detail)
    return status
