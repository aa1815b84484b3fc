"""GetInfo from one info object per service: the engine gathers what the service says about itself, the servicer converts.

`ServiceInfo` is plain data (no protobuf); `info_response` fills any service's GetInfoResponse from it by field name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from google.protobuf.message import Message

from crucible.runtime.convert import batching_settings, model_identity

if TYPE_CHECKING:
    from crucible.models.loading import ModelIdentity
    from crucible.runtime.batching import BatchSettings

ResponseT = TypeVar("ResponseT", bound=Message)


@dataclasses.dataclass(frozen=True)
class ServiceInfo:
    """What a service reports in GetInfo, in one object built by its engine.

    `models` maps each response field holding a model identity ("model", "generator_model", ...) to the loaded model's
    identity; `limits` maps each field of the service's Limits message to its value; `batching` is the batcher's
    settings (None when the service has none); `fields` holds the response's other fields by name (scalars, lists).
    """

    models: Mapping[str, ModelIdentity]
    limits: Mapping[str, int | float]
    batching: BatchSettings | None = None
    fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def info_response(info: ServiceInfo, response_type: type[ResponseT]) -> ResponseT:
    """The GetInfoResponse of `response_type` built from `info`; a name the message lacks raises ValueError (a service's
    info and its contract disagree: a programming error caught by the service's GetInfo test)."""
    response = response_type(**info.fields)
    for field, identity in info.models.items():
        getattr(response, field).CopyFrom(model_identity(identity))
    limits = getattr(response, "limits")  # noqa: B009 - every GetInfoResponse has one; the type is the service's own
    for name, value in info.limits.items():
        if name not in limits.DESCRIPTOR.fields_by_name:
            raise ValueError(f"{limits.DESCRIPTOR.full_name} has no field {name!r}")
        setattr(limits, name, value)
    if info.batching is not None:
        getattr(response, "batching").CopyFrom(batching_settings(info.batching))  # noqa: B009
    return response
