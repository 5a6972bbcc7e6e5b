"""The user-space side of the protocol contract: what a protocol module hands the span builder.

The span builder owns everything a span has whatever its protocol (ids, times, resource, network
attributes, the thread); a protocol module turns one kernel record's request and response bytes into
an ``Operation``. ``registry.py`` says which module handles which protocol number.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from otelbpf.events import RequestEvent
from otelbpf.propagation import TraceParent
from otelbpf.spans import AttributeValue, SpanKind, StatusCode


@dataclass(slots=True)
class Endpoints:
    """The connection's addresses in text form (None when the kernel did not see the socket)."""

    local: str | None
    peer: str | None


@dataclass(slots=True)
class Operation:
    """One request as its protocol understood it: the span's name, kind, own attributes and status."""

    name: str
    kind: SpanKind
    attributes: dict[str, AttributeValue] = field(default_factory=dict)
    status: StatusCode = StatusCode.UNSET
    status_message: str = ""
    parent: TraceParent | None = None  # a caller's context carried in the request (W3C traceparent)


@dataclass
class BuildStats:
    """What the protocol modules saw that did not parse cleanly (reported, never silent)."""

    unparsed_requests: int = 0
    invalid_traceparents: int = 0  # a new trace was started instead
    traceparents: int = 0  # server spans that joined their caller's trace
    no_span: int = 0  # records that carried no operation: handshakes, SSL requests, prepare-only round trips


class ProtocolSpans(Protocol):
    """A protocol's user-space module, as the span builder calls it."""

    def describe(self, ev: RequestEvent, endpoints: Endpoints) -> Operation | None: ...
