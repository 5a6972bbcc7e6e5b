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


@dataclass(slots=True)
class Template:
    """What one request head on one connection gives every span it starts: everything but the outcome.

    A protocol whose spans are a pure function of (connection, request bytes) and the record's outcome
    fields (status, sizes, end, flags) offers templates; the span builder caches them, so a repeated
    request (keep-alive clients, health checks, polling) costs a lookup instead of a parse.
    """

    name: str
    kind: SpanKind
    attributes: dict[str, AttributeValue]  # constant: shared by every span made from this template
    parent: TraceParent | None = None  # a caller's context carried in the request (W3C traceparent)
    flags: int = 0  # the protocol's own facts about the request, for finish()
    cacheable: bool = True  # False: never repeats (it carries a per-request traceparent)
    shared: object = None  # the builder's AttributeBlock for these attributes (set on first use)


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


class TemplatedSpans(Protocol):
    """A protocol module whose spans come from a cacheable template plus the record's outcome."""

    def template(self, ev: RequestEvent, endpoints: Endpoints) -> Template: ...

    def finish(self, ev: RequestEvent, template: Template) -> tuple[dict[str, AttributeValue], StatusCode, str]: ...
