"""gRPC servicer of the detector service: protobuf <-> domain translation only.

Its RPCs are built in issue #3; until then every method answers UNIMPLEMENTED (never a fake success).
"""

from __future__ import annotations

from typing import Any

from crucible.api.detector.v1 import detector_service_pb2, detector_service_pb2_grpc
from crucible.runtime.server import unimplemented_servicer

SERVICE_DESCRIPTOR = detector_service_pb2.DESCRIPTOR.services_by_name["DetectorService"]


def build_servicer() -> Any:
    """The servicer registered on the server."""
    return unimplemented_servicer(detector_service_pb2_grpc.DetectorServiceServicer, SERVICE_DESCRIPTOR, "issue #3")
