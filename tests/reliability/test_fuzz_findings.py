"""Requests the fuzz found to make a server answer INTERNAL, kept as fixed regression cases (the fuzz's bounded run
does not reach all of them every time): out-of-range durations, timestamps and sizes must be INVALID_ARGUMENT or
OUT_OF_RANGE, never an unhandled overflow.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import json_format

from tests.reliability.support import AUTH, SERVER_FAULTS, SERVING, Running, all_methods, call, health, request_class

I64, U64, I32 = 2**63 - 1, 2**64 - 1, 2**31 - 1
SPEC = {"command": ["echo", "hi"], "provider_policy": "PROVIDER_POLICY_EXPLICIT", "providers": ["dryrun"]}
MODELS = [{"name": "proposer", "parameter_count": 70000000000, "precision": "PRECISION_INT4"}]
DEVICES = [{"name": "cuda:0", "kind": "DEVICE_KIND_GPU", "memory_bytes": 85899345920}]
TRANSFORMER = {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "vocab_size": 50304}

FINDINGS = [
    ("scheduler", "CreateJob", {"spec": {**SPEC, "max_duration": {"seconds": I64}}}),
    ("scheduler", "CreateJob", {"spec": {**SPEC, "expected_duration": {"seconds": I64}}}),
    ("scheduler", "PlanPlacement", {"models": MODELS, "devices": DEVICES, "parallel_requests": I32, "sequence_length": 4096}),
    (
        "scheduler",
        "PlanPlacement",
        {
            "models": [{**MODELS[0], "activation_bytes_per_request": U64}],
            "devices": DEVICES,
            "parallel_requests": 3,
            "sequence_length": 4096,
        },
    ),
    (
        "scheduler",
        "EstimateRequirements",
        {
            "transformer": TRANSFORMER,
            "workload": "WORKLOAD_KIND_TRAINING",
            "batch_size": 12,
            "block_size": I32,
            "precision": "PRECISION_MIXED_BF16",
            "optimizer": "OPTIMIZER_ADAMW",
        },
    ),
    (
        "cost",
        "RecordUsage",
        {
            "job_id": "j1",
            "offer_id": "lambda/gpu_1x_a10//on-demand",
            "scope": "user:alice",
            "start_time": {"seconds": -(2**63)},
            "end_time": {"seconds": 1795172400},
        },
    ),
    ("cost", "EstimateCost", {"offer_id": "lambda/gpu_1x_a10//on-demand", "duration": {"seconds": I64}}),
    (
        "cost",
        "CompareProviders",
        {
            "requirements": {"gpu_count": 1, "min_gpu_memory_gib": 40},
            "duration": {"seconds": I64},
            "reference_gpu_name": "A100-80GB",
            "objective": "OBJECTIVE_CHEAPEST",
        },
    ),
]


def _message(method, fields: dict):
    """Build the request field by field (json_format refuses out-of-range Duration/Timestamp values)."""
    message = request_class(method)()
    for name, value in fields.items():
        field = message.DESCRIPTOR.fields_by_name[name]
        if field.message_type is not None and field.message_type.full_name in (
            "google.protobuf.Duration",
            "google.protobuf.Timestamp",
        ):
            getattr(message, name).seconds = value["seconds"]
        elif field.message_type is not None and field.message_type.full_name == "crucible.scheduler.v1.JobSpec":
            spec = {k: v for k, v in value.items() if not k.endswith("_duration")}
            json_format.ParseDict(spec, getattr(message, name))
            for k in ("max_duration", "expected_duration"):
                if k in value:
                    getattr(getattr(message, name), k).seconds = value[k]["seconds"]
        else:
            json_format.ParseDict({name: value}, message, ignore_unknown_fields=False)
    return message


@pytest.mark.parametrize(("service", "name", "fields"), FINDINGS, ids=[f"{s}.{n}-{i}" for i, (s, n, _) in enumerate(FINDINGS)])
def test_found_request_is_refused_cleanly(fleet: dict[str, Running], service: str, name: str, fields: dict) -> None:
    method = next(m for s, m in all_methods() if s == service and m.name == name)
    request = _message(method, fields)
    with grpc.insecure_channel(fleet[service].address) as channel:
        code = call(channel, method, [request], timeout=30, metadata=AUTH)
        assert code not in SERVER_FAULTS, f"{method.full_name} answered {code.name} to {request}"
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE), code
        assert health(channel, fleet[service].service) == SERVING
