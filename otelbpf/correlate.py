"""Kernel request records -> internal spans: what every span has, whatever its protocol.

The protocol's module (``protocols/registry.py``) names the span and gives its own attributes; this
module adds ids, times, the resource, the connection's network attributes and the thread. A server
request that carries a valid W3C ``traceparent`` joins its caller's trace under the caller's
span (``otelbpf.parent.source=traceparent``). Every other span starts as the root of its own trace;
``linking.py`` then finds parents by thread and by connection.
"""

from __future__ import annotations

import logging
import random
import socket

from otelbpf import tcp_facts
from otelbpf.clock import ClockMap
from otelbpf.events import RequestEvent
from otelbpf.protocols.base import BuildStats, Endpoints, Template, TemplatedSpans
from otelbpf.protocols.http1 import split_host
from otelbpf.protocols.registry import ProtocolOptions, protocol_modules
from otelbpf.resources import ResourceCache
from otelbpf.spans import AttributeBlock, AttributeValue, Span, SpanKind, StatusCode

logger = logging.getLogger(__name__)

_AF_INET = 2
_AF_INET6 = 10
_V4_MAPPED = b"\x00" * 10 + b"\xff\xff"


def format_address(family: int, raw: bytes) -> str | None:
    """Text form of a kernel address; IPv4-mapped IPv6 addresses come out as plain IPv4."""
    if family == _AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    if family == _AF_INET6:
        if raw[:12] == _V4_MAPPED:
            return socket.inet_ntop(socket.AF_INET, raw[12:16])
        return socket.inet_ntop(socket.AF_INET6, raw[:16])
    return None


__all__ = ["BuildStats", "IdGenerator", "SpanBuilder", "format_address", "split_host"]


class IdGenerator:
    """Random W3C trace and span ids (never all-zero), from a generator seeded by the OS.

    Ids are cut from a block of random bytes drawn once per few thousand ids: one getrandbits call
    and a slice each, instead of a call and an int conversion per id.
    """

    _BLOCK = 8 * 4096

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed if seed is not None else random.SystemRandom().getrandbits(64))
        self._pool = b""
        self._pos = 0

    def _take(self, n: int) -> bytes:
        pos = self._pos
        if pos + n > len(self._pool):
            self._pool = self._rng.getrandbits(self._BLOCK * 8).to_bytes(self._BLOCK, "big")
            pos = 0
        self._pos = pos + n
        return self._pool[pos : pos + n]

    def trace_id(self) -> bytes:
        """A new 16-byte trace id."""
        while True:
            value = self._take(16)
            if value != _ZERO16:
                return value

    def span_id(self) -> bytes:
        """A new 8-byte span id."""
        while True:
            value = self._take(8)
            if value != _ZERO8:
                return value


_ZERO16 = bytes(16)
_ZERO8 = bytes(8)


class UnknownProtocol(ValueError):
    """A record of a protocol no user-space module handles (the kernel and user space disagree)."""


class SpanBuilder:
    """Turns one paired request/response from the kernel into one span, whatever its protocol."""

    def __init__(
        self,
        resources: ResourceCache,
        clock: ClockMap,
        ids: IdGenerator | None = None,
        capture_query: bool = False,
        raw_db_query_text: bool = False,
        max_templates: int = 4096,
    ) -> None:
        self.resources = resources
        self.clock = clock
        self._ids = ids or IdGenerator()
        self.stats = BuildStats()
        options = ProtocolOptions(capture_query=capture_query, raw_db_query_text=raw_db_query_text)
        self._protocols = protocol_modules(self.stats, options)
        self._templated = {type(m) for m in self._protocols.values() if hasattr(m, "template")}
        self._templates: dict[tuple[object, ...], Template] = {}
        self._max_templates = max_templates

    def build(self, ev: RequestEvent) -> Span | None:
        """The span for one kernel event; None for a record that carries no operation (a handshake)."""
        module = self._protocols.get(ev.protocol)
        if module is None:
            raise UnknownProtocol(f"no module for protocol {ev.protocol}")
        if module.__class__ in self._templated:
            return self._from_template(module, ev)
        local = format_address(ev.family, ev.local_addr)
        peer = format_address(ev.family, ev.peer_addr)
        op = module.describe(ev, Endpoints(local, peer))
        if op is None:
            self.stats.no_span += 1
            return None
        attrs = op.attributes
        attrs.update(_network(ev, local, peer))
        attrs["thread.id"] = ev.tid
        message = op.status_message
        if ev.tcp_flags:
            message = _tcp(ev, attrs, message)
        parent = op.parent
        return Span(
            trace_id=parent.trace_id if parent else self._ids.trace_id(),
            span_id=self._ids.span_id(),
            parent_span_id=parent.span_id if parent else None,
            trace_state=parent.trace_state if parent else "",
            name=op.name,
            kind=op.kind,
            start_ns=self.clock.to_wall(ev.start_ns),
            end_ns=self.clock.to_wall(ev.end_ns),
            resource=self.resources.get(ev.pid, ev.comm),
            attributes=attrs,
            status=op.status,
            status_message=message,
        )

    def build_connect(self, ev: RequestEvent) -> Span:
        """The ``connect`` CLIENT error span of a failed connect record (events.decode_connect)."""
        local = format_address(ev.family, ev.local_addr)
        peer = format_address(ev.family, ev.peer_addr)
        attrs = _network(ev, local, peer)
        attrs["thread.id"] = ev.tid
        attrs["error.type"] = tcp_facts.connect_error_type(ev.status)
        tcp_facts.add_attributes(ev, attrs)
        return Span(
            trace_id=self._ids.trace_id(),
            span_id=self._ids.span_id(),
            name="connect",
            kind=SpanKind.CLIENT,
            start_ns=self.clock.to_wall(ev.start_ns),
            end_ns=self.clock.to_wall(ev.end_ns),
            resource=self.resources.get(ev.pid, ev.comm),
            attributes=attrs,
            status=StatusCode.ERROR,
            status_message=tcp_facts.connect_error_message(ev.status),
        )

    def _from_template(self, module: TemplatedSpans, ev: RequestEvent) -> Span:
        # Everything but the outcome is a function of the connection and the request bytes.
        key = (ev.sock_id, ev.pid, ev.role, ev.tls, ev.family, ev.local_addr, ev.peer_addr,
               ev.local_port, ev.peer_port, ev.req_offset, ev.req)  # fmt: skip
        t = self._templates.get(key)
        if t is None:
            local = format_address(ev.family, ev.local_addr)
            peer = format_address(ev.family, ev.peer_addr)
            t = module.template(ev, Endpoints(local, peer))
            t.attributes.update(_network(ev, local, peer))
            t.shared = AttributeBlock(t.attributes)
            if t.cacheable:
                if len(self._templates) >= self._max_templates:
                    self._templates.clear()  # bounded; refilled by the requests that repeat
                self._templates[key] = t
        attrs, status, message = module.finish(ev, t)
        attrs["thread.id"] = ev.tid
        if ev.tcp_flags:
            message = _tcp(ev, attrs, message)
        parent = t.parent
        offset = self.clock.offset_ns
        if parent is None:
            return Span(self._ids.trace_id(), self._ids.span_id(), t.name, t.kind, ev.start_ns + offset,
                        ev.end_ns + offset, self.resources.get(ev.pid, ev.comm), attrs, None, status, message,
                        "", [], t.shared)  # fmt: skip
        return Span(parent.trace_id, self._ids.span_id(), t.name, t.kind, ev.start_ns + offset, ev.end_ns + offset,
                    self.resources.get(ev.pid, ev.comm), attrs, parent.span_id, status, message,
                    parent.trace_state, [], t.shared)  # fmt: skip


def _tcp(ev: RequestEvent, attrs: dict[str, AttributeValue], message: str) -> str:
    """Add the TCP facts; the status message, reworded when a reset broke the connection."""
    tcp_facts.add_attributes(ev, attrs)
    if attrs.get("error.type") == tcp_facts.CONNECTION_RESET:
        return "connection reset before the response completed"
    return message


def _network(ev: RequestEvent, local: str | None, peer: str | None) -> dict[str, AttributeValue]:
    """The connection's network attributes, whatever the protocol."""
    attrs: dict[str, AttributeValue] = {"network.transport": "tcp"}
    if ev.family in (_AF_INET, _AF_INET6):
        attrs["network.type"] = "ipv6" if ev.family == _AF_INET6 and local and ":" in local else "ipv4"
    if peer:
        attrs["network.peer.address"] = peer
        attrs["network.peer.port"] = ev.peer_port
    if local:
        attrs["network.local.address"] = local
        attrs["network.local.port"] = ev.local_port
    return attrs
