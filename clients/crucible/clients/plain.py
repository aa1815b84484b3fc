"""Protobuf messages to plain frozen dataclasses (generated once per message type) and dicts to requests.

Timestamps become aware datetimes, Durations timedeltas, enums their short names, unset optionals None.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

MessageT = TypeVar("MessageT", bound=Message)

_WKT = {"google.protobuf.Timestamp", "google.protobuf.Duration"}


def _enum_name(enum: EnumDescriptor, number: int) -> str:
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    prefix = _enum_prefix(enum)
    return value.name[len(prefix) :].lower() if value.name.startswith(prefix) else value.name


@functools.cache
def _enum_prefix(enum: EnumDescriptor) -> str:
    upper = "".join("_" + c if c.isupper() else c for c in enum.name).lstrip("_").upper()
    return upper + "_"


@functools.cache
def dataclass_for(descriptor: Descriptor) -> type:
    """The frozen dataclass mirroring a message type (same field names)."""
    return dataclasses.make_dataclass(descriptor.name, [f.name for f in descriptor.fields], frozen=True)


def _value(field: Any, value: Any) -> Any:  # a FieldDescriptor (python or upb implementation)
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return to_plain(value)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return _enum_name(field.enum_type, value)
    return value


def to_plain(message: Message) -> Any:
    """Convert a message to its dataclass (recursively); WKT times to datetime/timedelta."""
    name = message.DESCRIPTOR.full_name
    if name == "google.protobuf.Timestamp":
        return message.ToDatetime(tzinfo=dt.UTC)  # type: ignore[attr-defined]
    if name == "google.protobuf.Duration":
        return message.ToTimedelta()  # type: ignore[attr-defined]
    values: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        raw = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            values[field.name] = {k: _value(value_field, v) for k, v in raw.items()}
        elif field.is_repeated:
            values[field.name] = [_value(field, v) for v in raw]
        elif field.has_presence and not message.HasField(field.name):
            values[field.name] = None
        else:
            values[field.name] = _value(field, raw)
    return dataclass_for(message.DESCRIPTOR)(**values)


def request(message_type: type[MessageT], fields: dict[str, Any]) -> MessageT:
    """Build a request from a dict in protobuf JSON form (enum names, "3600s" durations, RFC 3339 timestamps)."""
    return json_format.ParseDict(fields, message_type())
