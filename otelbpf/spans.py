"""The internal span type: what the pipeline carries until the OTLP edge.

OpenTelemetry SDK objects cost about 25 µs each here, so the hot path uses these plain slotted
dataclasses and only ``export.py`` turns them into OTLP protobuf.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

# Tuples are string arrays (container.image.tags); everything else on a span is a single value.
AttributeValue = str | int | float | bool | tuple[str, ...]


class SpanKind(enum.IntEnum):
    """Span kinds, numbered as in OTLP's ``Span.SpanKind``."""

    INTERNAL = 1
    SERVER = 2
    CLIENT = 3


class StatusCode(enum.IntEnum):
    """Span status codes, numbered as in OTLP's ``Status.StatusCode``."""

    UNSET = 0
    OK = 1
    ERROR = 2


@dataclass(frozen=True, slots=True)
class Resource:
    """The entity a span comes from (one traced process); hashable so spans can be grouped by it."""

    attributes: tuple[tuple[str, AttributeValue], ...]

    def get(self, key: str, default: AttributeValue | None = None) -> AttributeValue | None:
        """Return one attribute's value."""
        for k, v in self.attributes:
            if k == key:
                return v
        return default

    @property
    def service_name(self) -> str:
        """The ``service.name`` attribute, or ``unknown_service``."""
        return str(self.get("service.name", "unknown_service"))


@dataclass(frozen=True, slots=True)
class SpanLink:
    """A reference from a span to another span, in the same trace or another one (OTLP ``Span.Link``)."""

    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes
    trace_state: str = ""
    # A tuple of pairs, not a dict, so links stay hashable like Resource.
    attributes: tuple[tuple[str, AttributeValue], ...] = ()


class AttributeBlock:
    """Attributes shared by many spans (one connection's, one request head's), built once and never changed.

    The OTLP encoder keeps the block's encoded bytes in ``wire`` after its first use, so a span that
    shares a block pays for its own attributes only.
    """

    __slots__ = ("items", "wire")

    def __init__(self, items: dict[str, AttributeValue]) -> None:
        self.items = items  # read-only by contract: spans share it
        self.wire: bytes | None = None

    def __repr__(self) -> str:
        return f"AttributeBlock({self.items!r})"


@dataclass(slots=True)
class Span:
    """One finished operation. Times are Unix epoch nanoseconds (already mapped from kernel time)."""

    trace_id: bytes  # 16 bytes, never all zero
    span_id: bytes  # 8 bytes, never all zero
    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int
    resource: Resource
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    parent_span_id: bytes | None = None
    status: StatusCode = StatusCode.UNSET
    status_message: str = ""
    trace_state: str = ""
    links: list[SpanLink] = field(default_factory=list)
    # Attributes this span shares with others (its connection's, its request head's); ``attributes``
    # holds only its own. The two never have a key in common (OTLP keys are unique).
    shared: AttributeBlock | None = None

    def all_attributes(self) -> dict[str, AttributeValue]:
        """Shared and own attributes together, as the backend sees them."""
        if self.shared is None:
            return self.attributes
        return {**self.shared.items, **self.attributes}

    @property
    def duration_ns(self) -> int:
        """End minus start, in nanoseconds."""
        return self.end_ns - self.start_ns
