"""gRPC servicer of the cost service: protobuf <-> domain translation only.

Its RPCs are built in issue #6; until then every method answers UNIMPLEMENTED (never a fake success).
"""

from __future__ import annotations

from typing import Any

from crucible.api.cost.v1 import cost_service_pb2, cost_service_pb2_grpc
from crucible.runtime.server import unimplemented_servicer

SERVICE_DESCRIPTOR = cost_service_pb2.DESCRIPTOR.services_by_name["CostService"]


def build_servicer() -> Any:
    """The servicer registered on the server."""
    return unimplemented_servicer(cost_service_pb2_grpc.CostServiceServicer, SERVICE_DESCRIPTOR, "issue #6")
