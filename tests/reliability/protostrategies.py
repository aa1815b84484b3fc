"""Hypothesis strategies that build arbitrary protobuf messages from their descriptors, for fuzzing every RPC.

Scalars span their whole wire range (huge and negative numbers, NaN, infinities), enums include unknown values, strings any
Unicode but surrogates (control characters included); nested, repeated, map and oneof fields are drawn with bounded sizes.
"""

from __future__ import annotations

from collections.abc import Mapping

from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

FD = FieldDescriptor

# Plain words so a share of the generated texts is ordinary prose that passes validation and reaches the models.
WORDS = (
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "Paris",
    "capital",
    "of",
    "France",
    "is",
    "a",
    "model",
    "question",
    "answer",
    "because",
    "vote",
    "2026",
    "A100-80GB",
    "H100",
    "lambda",
    "local",
    "user:alice",
    "project:x",
    "3.5",
    "-1",
    "café",
    "über",
)
# Strings that often break parsers and path handling.
EDGE_STRINGS = (
    "",
    " ",
    "\n",
    "\t\r\n",
    "\x00",
    "\x1b[31m",
    "\u200b",
    "\ufeff",
    "\U0001f600" * 3,
    "../../../etc/passwd",
    "/etc/passwd",
    "a/../../x",
    "%s%n",
    "{}",
    "null",
    "NaN",
    "-0",
    "1e308",
    "9" * 40,
    "x" * 700,
    "A100-80GB",
    "lambda/gpu_1x_a10//on-demand",
    "local",
    "dryrun",
    "global",
    "user:alice",
    "job-0",
)

_RANGES = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}


def text_strategy(max_chars: int = 60) -> st.SearchStrategy[str]:
    """Prose, arbitrary Unicode (control characters, emoji, combining marks; no surrogates) or a known edge case."""
    any_char = st.characters(exclude_categories=("Cs",))
    prose = st.lists(st.sampled_from(WORDS), min_size=1, max_size=14).map(" ".join)
    return st.one_of(prose, st.text(any_char, max_size=max_chars), st.sampled_from(EDGE_STRINGS))


def integer_strategy(lo: int, hi: int) -> st.SearchStrategy[int]:
    """Small values (often valid), the extremes, and anything in between."""
    small = st.integers(max(lo, -3), min(hi, 40))
    extremes = st.sampled_from(sorted({lo, hi, max(lo, -1), 0, min(hi, 2**31 - 1)}))
    return st.one_of(small, extremes, st.integers(lo, hi))


def float_strategy(width: int) -> st.SearchStrategy[float]:
    """Values in [0, 2] (probabilities, temperatures), NaN, infinities, subnormals and huge magnitudes."""
    return st.one_of(
        st.floats(0.0, 2.0, width=width),
        st.floats(width=width, allow_nan=True, allow_infinity=True),
        st.sampled_from([0.0, -0.0, 1.0, -1.0, float("nan"), float("inf"), float("-inf")]),
    )


def _is_map(field: FieldDescriptor) -> bool:
    return field.type == FD.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def _is_repeated(field: FieldDescriptor) -> bool:
    return field.is_repeated


def _real_oneof(field: FieldDescriptor):
    """The field's oneof unless it is the synthetic one of a proto3 `optional` field."""
    oneof = field.containing_oneof
    if oneof is None or (len(oneof.fields) == 1 and oneof.name == "_" + field.name):
        return None
    return oneof


class MessageStrategies:
    """Builds (and caches) a strategy per message type. `overrides` maps a field's full name (or its bare name, for
    every message with such a field) to the strategy of one value of it (an element, for repeated fields); sizes are
    bounded by `max_repeated`, `max_chars` and `max_depth`."""

    def __init__(
        self,
        overrides: Mapping[str, st.SearchStrategy] | None = None,
        *,
        max_repeated: int = 4,
        max_chars: int = 60,
        max_depth: int = 4,
    ) -> None:
        self.overrides = dict(overrides or {})
        self.max_repeated = max_repeated
        self.max_chars = max_chars
        self.max_depth = max_depth
        self._cache: dict[tuple[str, int], st.SearchStrategy[Message]] = {}

    def for_message(self, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
        """Messages of this type, any subset of fields set (at `max_depth`, nested messages stay empty)."""
        key = (descriptor.full_name, depth)
        if key not in self._cache:
            self._cache[key] = self._build(descriptor, depth)
        return self._cache[key]

    def _value(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy:
        override = self.overrides.get(field.full_name, self.overrides.get(field.name))
        if override is not None:
            return override
        t = field.type
        if t == FD.TYPE_MESSAGE:
            return self.for_message(field.message_type, depth + 1)
        if t == FD.TYPE_ENUM:
            known = sorted(v.number for v in field.enum_type.values)
            return st.one_of(st.sampled_from(known), st.sampled_from(known), integer_strategy(-(2**31), 2**31 - 1))
        if t == FD.TYPE_STRING:
            return text_strategy(self.max_chars)
        if t == FD.TYPE_BYTES:
            return st.binary(max_size=self.max_chars)
        if t == FD.TYPE_BOOL:
            return st.booleans()
        if t == FD.TYPE_DOUBLE:
            return float_strategy(64)
        if t == FD.TYPE_FLOAT:
            return float_strategy(32)
        lo, hi = _RANGES[t]
        return integer_strategy(lo, hi)

    def _field(self, field: FieldDescriptor, depth: int) -> st.SearchStrategy:
        """A value to assign, or None to leave the field unset."""
        if field.type == FD.TYPE_MESSAGE and depth >= self.max_depth:
            return st.none()
        if _is_map(field):
            entry = field.message_type
            keys = self._value(entry.fields_by_name["key"], depth)
            values = self._value(entry.fields_by_name["value"], depth)
            return st.none() | st.dictionaries(keys, values, max_size=self.max_repeated)
        value = self._value(field, depth)
        if _is_repeated(field):
            return st.none() | st.lists(value, min_size=1, max_size=self.max_repeated)
        return st.none() | value

    def _build(self, descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
        cls = message_factory.GetMessageClass(descriptor)
        plain = [f for f in descriptor.fields if _real_oneof(f) is None]
        oneofs = [o for o in descriptor.oneofs if not (len(o.fields) == 1 and o.name == "_" + o.fields[0].name)]

        @st.composite
        def build(draw) -> Message:
            message = cls()
            chosen = list(plain)
            for oneof in oneofs:
                member = draw(st.sampled_from([None, *oneof.fields]))
                if member is not None:
                    chosen.append(member)
            for field in chosen:
                value = draw(self._field(field, depth))
                if value is not None:
                    assign(message, field, value)
            return message

        return build()


def _submessages(message: Message) -> list[Message]:
    """`message` and every message nested in it (singular fields that are set, and repeated elements; not map values)."""
    found = [message]
    for field, value in message.ListFields():
        if field.type != FD.TYPE_MESSAGE or _is_map(field):
            continue
        for child in value if _is_repeated(field) else [value]:
            found.extend(_submessages(child))
    return found


def mutations(base: Message, strategies: MessageStrategies, max_edits: int = 2) -> st.SearchStrategy[Message]:
    """Copies of a valid `base` with up to `max_edits` fields, anywhere in it, replaced by a drawn value or cleared:
    requests that get past most checks and probe the next one."""

    @st.composite
    def mutate(draw) -> Message:
        message = type(base)()
        message.CopyFrom(base)
        for _ in range(draw(st.integers(0, max_edits))):
            target = draw(st.sampled_from(_submessages(message)))
            if not target.DESCRIPTOR.fields:
                continue
            field = draw(st.sampled_from(list(target.DESCRIPTOR.fields)))
            target.ClearField(field.name)
            value = draw(strategies._field(field, 1))
            if value is not None:
                assign(target, field, value)
        return message

    return mutate()


def assign(message: Message, field: FieldDescriptor, value) -> None:
    """Set one field of `message` (scalar, message, repeated or map) to a drawn value."""
    target = getattr(message, field.name)
    if _is_map(field):
        value_field = field.message_type.fields_by_name["value"]
        for k, v in value.items():
            if value_field.type == FD.TYPE_MESSAGE:
                target[k].CopyFrom(v)
            else:
                target[k] = v
    elif _is_repeated(field):
        if field.type == FD.TYPE_MESSAGE:
            for v in value:
                target.add().CopyFrom(v)
        else:
            target.extend(value)
    elif field.type == FD.TYPE_MESSAGE:
        target.CopyFrom(value)
    else:
        setattr(message, field.name, value)
