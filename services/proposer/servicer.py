"""gRPC servicer of the proposer service: protobuf <-> domain translation only.

Its RPCs are built in issue #4; until then every method answers UNIMPLEMENTED (never a fake success).
"""

from __future__ import annotations

from typing import Any

from crucible.api.proposer.v1 import proposer_service_pb2, proposer_service_pb2_grpc
from crucible.runtime.server import unimplemented_servicer

SERVICE_DESCRIPTOR = proposer_service_pb2.DESCRIPTOR.services_by_name["ProposerService"]


def build_servicer() -> Any:
    """The servicer registered on the server."""
    return unimplemented_servicer(proposer_service_pb2_grpc.ProposerServiceServicer, SERVICE_DESCRIPTOR, "issue #4")
