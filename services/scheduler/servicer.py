"""gRPC servicer of the scheduler service: protobuf <-> domain translation only.

Its RPCs are built in issue #7; until then every method answers UNIMPLEMENTED (never a fake success).
"""

from __future__ import annotations

from typing import Any

from crucible.api.scheduler.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc
from crucible.runtime.server import unimplemented_servicer

SERVICE_DESCRIPTOR = scheduler_service_pb2.DESCRIPTOR.services_by_name["SchedulerService"]


def build_servicer() -> Any:
    """The servicer registered on the server."""
    return unimplemented_servicer(scheduler_service_pb2_grpc.SchedulerServiceServicer, SERVICE_DESCRIPTOR, "issue #7")
