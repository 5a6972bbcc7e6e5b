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

from otelbpf.clock import ClockMap
from otelbpf.events import RequestEvent
from otelbpf.protocols.base import BuildStats, Endpoints
from otelbpf.protocols.http1 import split_host
from otelbpf.protocols.registry import ProtocolOptions, protocol_modules
from otelbpf.resources import ResourceCache
from otelbpf.spans import Span

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
    """Random W3C trace and span ids (never all-zero), from a generator seeded by the OS."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed if seed is not None else random.SystemRandom().getrandbits(64))

    def trace_id(self) -> bytes:
        """A new 16-byte trace id."""
        while True:
            value = self._rng.getrandbits(128)
            if value:
                return value.to_bytes(16, "big")

    def span_id(self) -> bytes:
        """A new 8-byte span id."""
        while True:
            value = self._rng.getrandbits(64)
            if value:
                return value.to_bytes(8, "big")


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
    ) -> None:
        self.resources = resources
        self.clock = clock
        self._ids = ids or IdGenerator()
        self.stats = BuildStats()
        options = ProtocolOptions(capture_query=capture_query, raw_db_query_text=raw_db_query_text)
        self._protocols = protocol_modules(self.stats, options)

    def build(self, ev: RequestEvent) -> Span | None:
        """The span for one kernel event; None for a record that carries no operation (a handshake)."""
        module = self._protocols.get(ev.protocol)
        if module is None:
            raise UnknownProtocol(f"no module for protocol {ev.protocol}")
        local = format_address(ev.family, ev.local_addr)
        peer = format_address(ev.family, ev.peer_addr)
        op = module.describe(ev, Endpoints(local, peer))
        if op is None:
            self.stats.no_span += 1
            return None
        attrs = op.attributes
        attrs["network.transport"] = "tcp"
        if ev.family in (_AF_INET, _AF_INET6):
            attrs["network.type"] = "ipv6" if ev.family == _AF_INET6 and local and ":" in local else "ipv4"
        if peer:
            attrs["network.peer.address"] = peer
            attrs["network.peer.port"] = ev.peer_port
        if local:
            attrs["network.local.address"] = local
            attrs["network.local.port"] = ev.local_port
        attrs["thread.id"] = ev.tid
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
            status_message=op.status_message,
        )
