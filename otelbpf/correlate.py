"""Kernel HTTP events -> internal spans with OpenTelemetry HTTP semantic conventions.

A server request that carries a valid W3C ``traceparent`` joins its caller's trace under the caller's
span (``otelbpf.parent.source=traceparent``). Every other span starts as the root of its own trace;
``linking.py`` then finds parents by thread and by connection.
"""

from __future__ import annotations

import logging
import random
import socket
from dataclasses import dataclass

from otelbpf import events
from otelbpf.clock import ClockMap
from otelbpf.events import HttpEvent
from otelbpf.propagation import parse_traceparent
from otelbpf.protocols.http1 import HttpRequestHead, canonical_method, parse_request
from otelbpf.protocols.route import span_name
from otelbpf.resources import ResourceCache
from otelbpf.spans import AttributeValue, Span, SpanKind, StatusCode

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


def split_host(host: str) -> tuple[str, int | None]:
    """Split a Host header into name and port (handles ``[v6]:port``)."""
    if host.startswith("["):
        end = host.find("]")
        if end > 0:
            rest = host[end + 1 :]
            port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
            return host[1:end], port
    name, sep, port_s = host.rpartition(":")
    if sep and port_s.isdigit() and name and ":" not in name:
        return name, int(port_s)
    return host, None


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


@dataclass
class BuildStats:
    """What the span builder saw that did not parse cleanly (reported, never silent)."""

    unparsed_requests: int = 0
    invalid_traceparents: int = 0  # a new trace was started instead
    traceparents: int = 0  # server spans that joined their caller's trace


class SpanBuilder:
    """Turns one paired request/response from the kernel into one span."""

    def __init__(
        self,
        resources: ResourceCache,
        clock: ClockMap,
        ids: IdGenerator | None = None,
        capture_query: bool = False,
    ) -> None:
        self.resources = resources
        self.clock = clock
        self._ids = ids or IdGenerator()
        self._capture_query = capture_query
        self.stats = BuildStats()
        # Span names repeat for the same path; the route heuristic costs ~2 µs, a lookup ~0.1 µs.
        self._names: dict[tuple[str, str | None], str] = {}

    def _name(self, method: str, path: str | None) -> str:
        key = (method, path)
        name = self._names.get(key)
        if name is None:
            name = span_name(method, path)
            if len(self._names) >= 4096:
                self._names.clear()  # bounded: paths full of ids must not grow it forever
            self._names[key] = name
        return name

    def build(self, ev: HttpEvent) -> Span:
        """The span for one kernel event."""
        head = parse_request(ev.req, ev.req_offset) if ev.req_offset < len(ev.req) else None
        if head is None:
            self.stats.unparsed_requests += 1
        server = ev.role == events.ROLE_SERVER
        attrs: dict[str, AttributeValue] = {}
        method = head.method if head else "_OTHER"
        canonical = canonical_method(method)
        attrs["http.request.method"] = canonical
        if canonical != method and head:
            attrs["http.request.method_original"] = method
        local = format_address(ev.family, ev.local_addr)
        peer = format_address(ev.family, ev.peer_addr)
        host, host_port = split_host(head.host) if head and head.host else (None, None)
        if head:
            attrs["url.path"] = head.path
            if head.query is not None and self._capture_query:
                attrs["url.query"] = head.query
            if head.version:
                attrs["network.protocol.version"] = head.version
            if head.user_agent:
                attrs["user_agent.original"] = head.user_agent
        # TLS plaintext comes from the library's read/write; the socket under it is the same TCP.
        tls = events.TLS_LIBRARIES.get(ev.tls) if ev.tls else None
        scheme, default_port = ("https", 443) if tls else ("http", 80)
        attrs["url.scheme"] = scheme
        if tls:
            attrs["otelbpf.tls.library"] = tls
        attrs["network.protocol.name"] = "http"
        attrs["network.transport"] = "tcp"
        if ev.family in (_AF_INET, _AF_INET6):
            attrs["network.type"] = "ipv6" if ev.family == _AF_INET6 and local and ":" in local else "ipv4"
        if peer:
            attrs["network.peer.address"] = peer
            attrs["network.peer.port"] = ev.peer_port
        if local:
            attrs["network.local.address"] = local
            attrs["network.local.port"] = ev.local_port
        if server:
            attrs["server.address"] = host or local or ""
            port = host_port if host_port is not None else ev.local_port
            if port:  # 0: a TLS session whose socket was not seen
                attrs["server.port"] = port
            if peer:
                attrs["client.address"] = peer
                attrs["client.port"] = ev.peer_port
            attrs["http.request.size"] = ev.bytes_in
            attrs["http.response.size"] = ev.bytes_out
        else:
            server_addr = host or peer or ""
            server_port = host_port if host_port is not None else ev.peer_port
            attrs["server.address"] = server_addr
            if server_port:
                attrs["server.port"] = server_port
            if head and server_addr:  # no Host header and no socket: no URL to name
                authority = f"[{server_addr}]" if ":" in server_addr else server_addr
                if server_port and server_port != default_port:
                    authority += f":{server_port}"
                query = f"?{head.query}" if head.query is not None and self._capture_query else ""
                attrs["url.full"] = f"{scheme}://{authority}{head.path}{query}"
            attrs["http.request.size"] = ev.bytes_out
            attrs["http.response.size"] = ev.bytes_in
        attrs["thread.id"] = ev.tid
        if ev.status:
            attrs["http.response.status_code"] = ev.status
        status, message = _status(ev, server, head)
        if status is StatusCode.ERROR:
            attrs["error.type"] = str(ev.status) if message == "" else "connection_closed"
        if ev.flags & events.FLAG_PIPELINED:
            attrs["otelbpf.http.pipelined"] = True
        parent = None
        if server and head and head.traceparent:
            # The caller was traced (an SDK, or a tracer on another host): continue its trace.
            parent = parse_traceparent(head.traceparent, head.tracestate)
            if parent is None:
                self.stats.invalid_traceparents += 1
            else:
                self.stats.traceparents += 1
                attrs["otelbpf.parent.source"] = "traceparent"
        return Span(
            trace_id=parent.trace_id if parent else self._ids.trace_id(),
            span_id=self._ids.span_id(),
            parent_span_id=parent.span_id if parent else None,
            trace_state=parent.trace_state if parent else "",
            name=self._name(method, head.path if head else None),
            kind=SpanKind.SERVER if server else SpanKind.CLIENT,
            start_ns=self.clock.to_wall(ev.start_ns),
            end_ns=self.clock.to_wall(ev.end_ns),
            resource=self.resources.get(ev.pid, ev.comm),
            attributes=attrs,
            status=status,
            status_message=message,
        )


def _status(ev: HttpEvent, server: bool, head: HttpRequestHead | None) -> tuple[StatusCode, str]:
    """Span status per semconv: 5xx on servers, 4xx/5xx on clients, broken connections always."""
    if ev.flags & (events.FLAG_CONN_CLOSED | events.FLAG_NO_RESPONSE):
        if ev.flags & events.FLAG_NO_RESPONSE:
            return StatusCode.ERROR, "connection closed before a response was sent"
        return StatusCode.ERROR, "connection closed before the response completed"
    threshold = 500 if server else 400
    if ev.status >= threshold:
        return StatusCode.ERROR, ""
    return StatusCode.UNSET, ""
