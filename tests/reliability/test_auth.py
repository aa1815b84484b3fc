"""With auth on, no call of any method of any service succeeds without the right bearer token; health stays open.

Empty and valid requests alike are refused with UNAUTHENTICATED before the handler runs (no job or budget is created).
"""

from __future__ import annotations

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from crucible.api.cost.v1 import cost_service_pb2, cost_service_pb2_grpc
from crucible.api.scheduler.v1 import scheduler_service_pb2, scheduler_service_pb2_grpc
from tests.reliability.support import AUTH, SERVING, TOKEN, Running, all_methods, call, health, request_class

# Everything a client might send instead of `authorization: Bearer <token>`.
BAD_CREDENTIALS = [
    (),
    (("authorization", "Bearer wrong-token"),),
    (("authorization", f"Bearer {TOKEN}x"),),
    (("authorization", f"Bearer {TOKEN[:-1]}"),),
    (("authorization", TOKEN),),
    (("authorization", f"Basic {TOKEN}"),),
    (("authorization", "Bearer "),),
    (("x-api-key", TOKEN),),
]


def _count_jobs_and_budgets(fleet: dict[str, Running]) -> tuple[int, int]:
    with grpc.insecure_channel(fleet["scheduler"].address) as ch:
        jobs = (
            scheduler_service_pb2_grpc.SchedulerServiceStub(ch)
            .ListJobs(scheduler_service_pb2.ListJobsRequest(page_size=1000), timeout=10, metadata=AUTH)
            .jobs
        )
    with grpc.insecure_channel(fleet["cost"].address) as ch:
        budgets = (
            cost_service_pb2_grpc.CostServiceStub(ch)
            .ListBudgets(cost_service_pb2.ListBudgetsRequest(), timeout=10, metadata=AUTH)
            .budgets
        )
    return len(jobs), len(budgets)


@pytest.mark.slow
def test_every_method_refuses_calls_without_a_valid_token(fleet: dict[str, Running], seeds: dict[str, list]) -> None:
    before = _count_jobs_and_budgets(fleet)
    refused = 0
    for service, method in all_methods():
        target = fleet[service]
        with grpc.insecure_channel(target.address) as channel:
            for request in (request_class(method)(), *seeds[method.full_name]):
                for metadata in BAD_CREDENTIALS:
                    code = call(channel, method, [request], timeout=10, metadata=metadata)
                    assert code == grpc.StatusCode.UNAUTHENTICATED, (
                        f"{method.full_name} with {metadata or 'no credentials'} answered {code.name}"
                    )
                    refused += 1
            assert health(channel, target.service) == SERVING  # health needs no token (probes)
            assert health(channel) == SERVING
    assert refused == sum(len(BAD_CREDENTIALS) * (1 + len(seeds[m.full_name])) for _, m in all_methods())
    assert _count_jobs_and_budgets(fleet) == before  # no refused CreateJob / CreateBudget had an effect
    for target in fleet.values():
        assert target.handled("UNAUTHENTICATED") > 0


def test_reflection_needs_the_token_too(fleet: dict[str, Running]) -> None:
    """Only health is exempt: reflection (the service listing) is refused without the token and works with it."""
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for target in fleet.values():
        with grpc.insecure_channel(target.address) as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                list(stub.ServerReflectionInfo(iter([request]), timeout=10))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            reply = list(stub.ServerReflectionInfo(iter([request]), timeout=10, metadata=AUTH))
            names = [s.name for s in reply[0].list_services_response.service]
            assert target.service in names


def test_the_right_token_is_accepted(fleet: dict[str, Running], seeds: dict[str, list]) -> None:
    """The control: the same seed requests with the token are not refused (so the refusals above are about the token)."""
    for service, method in all_methods():
        if method.name in ("CreateJob", "CreateBudget", "RecordUsage", "CancelJob", "DeleteJob"):
            continue  # side effects are covered by the fuzz; here only reads
        with grpc.insecure_channel(fleet[service].address) as channel:
            code = call(channel, method, seeds[method.full_name][:1], timeout=30, metadata=AUTH, max_responses=1)
            assert code != grpc.StatusCode.UNAUTHENTICATED
