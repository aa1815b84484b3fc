#!/usr/bin/env python3
"""Container health probe: one grpc.health.v1 Check of a Crucible service, over TLS when the service serves TLS.

Compose healthchecks and the exec probes of kustomize/components/tls-and-token run it (kubelet's grpc probe has no TLS).
"""

from __future__ import annotations

import argparse
import os
import sys

# Default gRPC port and health service name of each Crucible service (crucible.mesh.SERVICES holds the same facts;
# this probe stays import-light so it starts fast every few seconds).
SERVICES = {
    "detector": (50051, "crucible.detector.v1.DetectorService"),
    "proposer": (50052, "crucible.proposer.v1.ProposerService"),
    "scorer": (50053, "crucible.scorer.v1.ScorerService"),
    "scheduler": (50054, "crucible.scheduler.v1.SchedulerService"),
    "cost": (50055, "crucible.cost.v1.CostService"),
}


def _env(service: str, field: str) -> str:
    """A setting as the service reads it: CRUCIBLE_<SVC>_<FIELD>, then CRUCIBLE_<FIELD>, else ''."""
    return os.environ.get(f"CRUCIBLE_{service.upper()}_{field}", os.environ.get(f"CRUCIBLE_{field}", ""))


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; the service's port and TLS files default to its own CRUCIBLE_* environment."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("service", choices=sorted(SERVICES), help="which Crucible service to check")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to dial (default 127.0.0.1: the probe runs beside the server)"
    )
    parser.add_argument(
        "--port", type=int, default=None, help="gRPC port (default CRUCIBLE_<SVC>_PORT, else the service's default port)"
    )
    parser.add_argument(
        "--health-service",
        default=None,
        help="health service name; '' checks the whole server (default: the service's contract name)",
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="deadline of the check in seconds")
    parser.add_argument(
        "--tls",
        choices=("auto", "on", "off"),
        default="auto",
        help="auto: TLS when CRUCIBLE_TLS_CERT_FILE is set (the server then serves TLS)",
    )
    parser.add_argument(
        "--ca-file",
        default=None,
        help="CA bundle that signed the server certificate (default: "
        "CRUCIBLE_CLIENT_CA_FILE, else the server's own certificate file, which holds its chain)",
    )
    parser.add_argument(
        "--server-name",
        default=None,
        help="DNS name the server certificate must carry (default CRUCIBLE_PROBE_SERVER_NAME; empty: the dialled host)",
    )
    return parser.parse_args(argv)


def check(args: argparse.Namespace) -> tuple[bool, str]:
    """Run one health Check; returns (serving, human-readable status)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    default_port, contract = SERVICES[args.service]
    port = args.port if args.port is not None else int(_env(args.service, "PORT") or default_port)
    name = contract if args.health_service is None else args.health_service
    cert_file = _env(args.service, "TLS_CERT_FILE")
    use_tls = args.tls == "on" or (args.tls == "auto" and bool(cert_file))
    target = f"{args.host}:{port}"
    if use_tls:
        ca_file = args.ca_file or os.environ.get("CRUCIBLE_CLIENT_CA_FILE") or cert_file
        if not ca_file:
            return False, "TLS requested but no CA file (--ca-file or CRUCIBLE_CLIENT_CA_FILE)"
        client_key = client_chain = None
        if _env(args.service, "TLS_CLIENT_CA_FILE"):
            # mTLS: present the pod's own certificate (it must allow client authentication).
            client_chain, client_key = _read(cert_file), _read(_env(args.service, "TLS_KEY_FILE"))
        creds = grpc.ssl_channel_credentials(_read(ca_file), client_key, client_chain)
        server_name = args.server_name or os.environ.get("CRUCIBLE_PROBE_SERVER_NAME", "")
        options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
        channel = grpc.secure_channel(target, creds, options=options)
    else:
        channel = grpc.insecure_channel(target)
    try:
        request = health_pb2.HealthCheckRequest(service=name)
        reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=args.timeout)
    except grpc.RpcError as err:
        return False, f"{target} {name or '(server)'}: {err.code().name} {err.details() or ''}".rstrip()
    finally:
        channel.close()
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return reply.status == health_pb2.HealthCheckResponse.SERVING, f"{target} {name or '(server)'}: {status}"


def main(argv: list[str] | None = None) -> int:
    """Exit 0 when the service answers SERVING, 1 otherwise (the status goes to stdout for `docker inspect`)."""
    serving, message = check(parse_args(argv))
    print(message)
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())
