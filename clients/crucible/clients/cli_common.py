"""What every `crucible ...` command shares: durations, GPU resource strings, JSON lines and connection errors.

One parser and one message per concept, so the jobs, cost, detector and SDK commands accept and print the same things.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([dhms])")
_UNIT_S = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_GPUS = re.compile(
    r"^\s*(?P<names>[A-Za-z0-9][A-Za-z0-9_.\- ]*(?:,\s*[A-Za-z0-9][A-Za-z0-9_.\- ]*)*)?\s*(?::\s*(?P<count>\d+))?\s*$"
)

#: Most GPUs one instance can ask for (the largest machines in the catalog have 8; 64 leaves room for clusters).
MAX_GPUS = 64


def parse_duration(text: str) -> float:
    """Seconds in a duration such as '90s', '30m', '1h', '1h30m' or '2d' (a bare number is seconds)."""
    compact = str(text).strip().lower().replace(" ", "")
    try:
        seconds = float(compact)
    except ValueError:
        parts = _DURATION_PART.findall(compact)
        if not compact or "".join(n + u for n, u in parts) != compact:
            raise argparse.ArgumentTypeError(f"expected a duration such as 90s, 30m, 1h or 1h30m, got {text!r}") from None
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if not 0 <= seconds < 10 * 365 * 86400 or seconds != seconds:
        raise argparse.ArgumentTypeError(f"expected a duration between 0s and 10 years, got {text!r}")
    return seconds


def parse_duration_range(text: str) -> tuple[float, float]:
    """'3h' -> (3h, 3h); '1h..3h' -> (1h, 3h)."""
    low, sep, high = text.partition("..")
    return (parse_duration(low), parse_duration(high)) if sep else (parse_duration(low),) * 2


def parse_gpus(text: str) -> tuple[list[str], int]:
    """A resource string as SkyPilot writes it: 'A100:1' -> (['A100'], 1), 'H100' -> (['H100'], 1),
    'A100-80GB,H100:8' -> both names, 8 each; a bare count '2' -> ([], 2) (any GPU model); '0' is CPU only.

    A family name such as 'A100' matches every variant (A100-40GB, A100-80GB); the service ranks them cheapest first.
    """
    raw = str(text).strip()
    if raw.isdigit():
        count = int(raw)
        names: list[str] = []
    else:
        found = _GPUS.match(raw)
        if not raw or found is None or not found.group("names"):
            raise argparse.ArgumentTypeError(f"expected GPUs such as A100:1, H100:8, A100-80GB or 2, got {text!r}")
        names = [n.strip().upper() for n in found.group("names").split(",") if n.strip()]
        count = int(found.group("count")) if found.group("count") is not None else 1
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: a GPU model needs at least one GPU (use 0 alone for CPU only)")
    if count > MAX_GPUS:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {MAX_GPUS} GPUs per instance")
    return names, count


def message_dict(message: Message) -> dict[str, Any]:
    """A protobuf message as the JSON every `--json` prints: proto (snake_case) field names, every field, enums by name."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True, preserving_proto_field_name=True)


def print_json_line(value: Message | Mapping[str, Any], out: TextIO | None = None) -> None:
    """One object as one compact JSON line: the `--json` output of every command (a list prints one line per item)."""
    data = message_dict(value) if isinstance(value, Message) else dict(value)
    print(json.dumps(data, separators=(",", ":"), default=str), file=out or sys.stdout, flush=True)


# Details of an UNAVAILABLE raised by the client library itself (nothing answered), not by a service.
_TRANSPORT = ("failed to connect", "connection refused", "connections to all backends failing", "socket closed", "dns resolution")

#: Default ports, for the hint when a service answers on another service's port.
DEFAULT_PORTS = {"detector": 50051, "proposer": 50052, "scorer": 50053, "scheduler": 50054, "cost": 50055}


def rpc_error_lines(err: grpc.RpcError, service: str, address: str) -> list[str]:
    """What to tell a person about a failed call: which address failed and what to do, never the library's repr."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else "") or ""
    where = f"the {service} service at {address}" if service and address else "a Crucible service"
    start_hint = "Is the mesh running? Start it with `crucible up`, or point --address at the service's host:port."
    if code == grpc.StatusCode.UNAVAILABLE and any(t in details.lower() for t in _TRANSPORT):
        return [f"cannot reach {where} ({code.name}: {details.strip()})", start_hint]
    if code == grpc.StatusCode.UNIMPLEMENTED and not service:
        return [f"a service answered but does not offer this call ({details}); check the address flags.", start_hint]
    if code == grpc.StatusCode.UNIMPLEMENTED:
        port = DEFAULT_PORTS.get(service)
        default = f" (the {service} listens on port {port} by default)" if port else ""
        return [
            f"{address or 'the address'} answered but is not the {service} service ({details or 'method not found'})",
            f"Check --address{default}.",
        ]
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and not details.startswith(("request", "the ")):
        return [f"no answer from {where} in time ({details}); raise --timeout, or check --address.", start_hint]
    lines = [f"{code.name}: {details}" if details else code.name]
    try:
        from crucible.clients.status import parse_status_details

        info, violations = parse_status_details(err)
    except Exception:  # a status without details, or one from another library: the message above is enough
        return lines
    if info is not None and info.reason:
        lines[0] = f"{code.name} [{info.reason}]: {details}"
    lines += [f"  {field}: {why}" for field, why in violations]
    if info is not None and info.metadata:
        lines.append("  " + ", ".join(f"{k}={v}" for k, v in sorted(info.metadata.items())))
    return lines


def report_rpc_error(err: grpc.RpcError, command: str, service: str, address: str) -> int:
    """Print `rpc_error_lines` to stderr under the command's name; the exit status of a failed call (1)."""
    lines = rpc_error_lines(err, service, address)
    print(f"{command}: {lines[0]}", file=sys.stderr)
    for line in lines[1:]:
        print(line if line.startswith("  ") else f"  {line}", file=sys.stderr)
    return 1
