"""gRPC servicer of the scorer service: protobuf <-> domain translation only.

Its RPCs are built in issue #5; until then every method answers UNIMPLEMENTED (never a fake success).
"""

from __future__ import annotations

from typing import Any

from crucible.api.scorer.v1 import scorer_service_pb2, scorer_service_pb2_grpc
from crucible.runtime.server import unimplemented_servicer

SERVICE_DESCRIPTOR = scorer_service_pb2.DESCRIPTOR.services_by_name["ScorerService"]


def build_servicer() -> Any:
    """The servicer registered on the server."""
    return unimplemented_servicer(scorer_service_pb2_grpc.ScorerServiceServicer, SERVICE_DESCRIPTOR, "issue #5")
