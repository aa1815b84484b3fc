"""Reading a failed call's google.rpc details on the client side: the ErrorInfo and the BadRequest field violations.

The SDK's retries and command-line messages use it; the servers' runtime re-exports it (crucible.runtime.errors).
"""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def parse_status_details(call_error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo | None, list[tuple[str, str]]]:
    """The ErrorInfo and BadRequest field violations (field, description) carried by a failed call, if any.

    Raises ValueError when the call's status details do not match its code and message (a malformed trailer).
    """
    status = rpc_status.from_call(call_error)
    info = None
    violations: list[tuple[str, str]] = []
    if status is None:
        return None, violations
    for any_detail in status.details:
        if any_detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_detail.Unpack(info)
        elif any_detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_detail.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
    return info, violations
