"""GetInfo from one info object (crucible.runtime.info): a service's ServiceInfo fills its GetInfoResponse by field name.

The scorer's response is the example; a name its contract lacks is an error, never silently dropped.
"""

from __future__ import annotations

import pytest

from crucible.api.scorer.v1 import scorer_service_pb2 as pb
from crucible.models.loading import ModelIdentity
from crucible.runtime.batching import BatchSettings
from crucible.runtime.info import ServiceInfo, info_response

IDENTITY = ModelIdentity(name="smollm2-135m", revision="abc123", dtype="float32", device="cpu", quantization="none")


def test_every_part_of_the_info_lands_in_its_field() -> None:
    info = ServiceInfo(
        models={"model": IDENTITY},
        limits={"max_items_per_call": 64, "max_choices_per_item": 26, "max_tokens": 2048},
        batching=BatchSettings(max_batch_size=8, max_batch_tokens=4096, max_wait_s=0.0025, max_queue_size=100),
        fields={"intra_op_threads": 2, "inter_op_threads": 1, "cores": [0, 1], "cores_pinned": True, "seca_prompt_template": "T"},
    )
    response = info_response(info, pb.GetInfoResponse)
    assert isinstance(response, pb.GetInfoResponse)
    assert (response.model.name, response.model.revision, response.model.device) == ("smollm2-135m", "abc123", "cpu")
    assert (response.limits.max_items_per_call, response.limits.max_choices_per_item, response.limits.max_tokens) == (
        64,
        26,
        2048,
    )
    assert response.batching.max_batch_size == 8 and response.batching.max_queue_size == 100
    assert response.batching.max_wait.ToNanoseconds() == 2_500_000
    assert list(response.cores) == [0, 1] and response.cores_pinned and response.seca_prompt_template == "T"
    assert (response.intra_op_threads, response.inter_op_threads) == (2, 1)


def test_no_batching_leaves_the_field_unset() -> None:
    response = info_response(ServiceInfo(models={}, limits={}), pb.GetInfoResponse)
    assert not response.HasField("batching") and not response.HasField("model")


@pytest.mark.parametrize(
    "info",
    [
        ServiceInfo(models={}, limits={"max_texts": 3}),
        ServiceInfo(models={}, limits={}, fields={"no_such_field": 1}),
        ServiceInfo(models={"generator_model": IDENTITY}, limits={}),
    ],
)
def test_a_name_the_contract_lacks_is_an_error(info: ServiceInfo) -> None:
    with pytest.raises((ValueError, AttributeError)):
        info_response(info, pb.GetInfoResponse)
