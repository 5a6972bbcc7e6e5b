"""HTTP/1.x: request heads parsed from raw kernel captures, and the spans made of them.

The eBPF probes copy only the first bytes of each read/write, so a capture may stop at any byte, may run on
into a request body, and may hold several pipelined requests. All functions here are pure over ``bytes``.
``parse_request`` runs once per request on the hot path, so it works with ``bytes.find``/slicing (which run
in C) and never walks single bytes in Python. ``HttpSpans`` maps a parsed record onto the HTTP semantic
conventions for the span builder.
"""

from __future__ import annotations

from dataclasses import dataclass

from otelbpf import events
from otelbpf.events import RequestEvent
from otelbpf.propagation import parse_traceparent
from otelbpf.protocols.base import BuildStats, Endpoints, Operation, Template
from otelbpf.protocols.route import KNOWN_METHODS, span_name
from otelbpf.spans import AttributeValue, SpanKind, StatusCode

_KNOWN_METHODS_B: frozenset[bytes] = frozenset(m.encode() for m in KNOWN_METHODS)

# Extension methods (WebDAV's PROPFIND, VERSION-CONTROL, ...) are uppercase tokens; a length cap keeps
# random uppercase text from being read as one.
_MAX_METHOD_LEN = 20
_METHOD_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ-_"
_CTL = bytes(range(0x20)) + b"\x7f"
_VERSIONS = {b" HTTP/1.1": "1.1", b" HTTP/1.0": "1.0"}
# RFC 9112 §2.2 lets a client send empty lines before a request (some send CRLF after a POST body); skip a
# few, bounded so a capture full of line breaks cannot cost a Python-level loop over its length.
_MAX_LEADING_EOL = 4

# Header names are matched in a lowercased copy of the header block; the leading LF anchors the match to a
# line start (so "X-Forwarded-Host:" never matches "host:") and the colon rejects "Host :" (RFC 9112 §5.1).
_H_HOST = b"\nhost:"
_H_USER_AGENT = b"\nuser-agent:"
_H_TRACEPARENT = b"\ntraceparent:"
_H_TRACESTATE = b"\ntracestate:"
_H_CONTENT_LENGTH = b"\ncontent-length:"
_H_TRANSFER_ENCODING = b"\ntransfer-encoding:"

# Template.flags: what the head said, counted in BuildStats each time the template is used.
_UNPARSED = 1
_TRACEPARENT_OK = 2
_TRACEPARENT_BAD = 4


@dataclass(slots=True)
class HttpRequestHead:
    """The parts of one HTTP/1.x request head that tracing needs; other header values are never kept."""

    method: str
    target: str  # raw request-target (userinfo in an absolute-form URL is redacted)
    path: str  # target without query or fragment; "" for authority-form (CONNECT), "*" for asterisk-form
    query: str | None  # without the "?"; None when the target has no "?"
    version: str  # "1.0" or "1.1"; "" when the capture ends before the version
    host: str | None
    user_agent: str | None
    traceparent: str | None
    tracestate: str | None
    content_length: int | None
    chunked: bool
    complete: bool  # the whole header block (up to the empty line) was in the capture


def canonical_method(method: str) -> str:
    """Return the method if OTel semconv knows it, else "_OTHER"."""
    return method if method in KNOWN_METHODS else "_OTHER"


def _skip_empty_lines(data: bytes, pos: int) -> int:
    end = min(len(data), pos + _MAX_LEADING_EOL)
    while pos < end and data[pos] in (0x0A, 0x0D):
        pos += 1
    return pos


def parse_request(data: bytes, offset: int = 0) -> HttpRequestHead | None:
    """Parse the HTTP/1.x request head starting at ``offset``; None if the bytes there are not one."""
    n = len(data)
    if offset < 0 or offset >= n:
        return None
    if data[offset] in (0x0A, 0x0D):
        offset = _skip_empty_lines(data, offset)
        if offset >= n:
            return None
    # Cheap rejection of TLS records, binary protocols and lowercase text before any allocation.
    if not 0x41 <= data[offset] <= 0x5A:
        return None
    sp = data.find(b" ", offset, offset + _MAX_METHOD_LEN + 1)
    if sp < 0:
        return None
    method_b = data[offset:sp]
    known = method_b in _KNOWN_METHODS_B
    if not known and method_b.translate(None, _METHOD_CHARS):
        return None
    method = method_b.decode("ascii")

    le = data.find(b"\n", sp)
    if le < 0:
        return _parse_truncated_line(data, sp, method, known)

    end = le - 1 if data[le - 1] == 0x0D else le
    version = _VERSIONS.get(data[end - 9 : end])
    if version is None:
        return None
    target_b = data[sp + 1 : end - 9]
    if not target_b or b" " in target_b:
        return None

    # The head ends at the first empty line; accept CRLF CRLF, LF LF and mixed endings. The LF-LF search is
    # bounded by the CRLF hit so a typical CRLF request does not scan its body for it.
    e_crlf = data.find(b"\n\r\n", le)
    e_lf = data.find(b"\n\n", le, e_crlf + 1 if e_crlf >= 0 else n)
    if e_lf >= 0:
        return _build(method, target_b, version, data[le : e_lf + 1], complete=True)
    if e_crlf >= 0:
        return _build(method, target_b, version, data[le : e_crlf + 1], complete=True)
    # Truncated inside the headers: use only whole lines, since a cut value (a Content-Length of "1" for
    # "12", half a traceparent) would be wrong rather than merely missing.
    return _build(method, target_b, version, data[le : data.rfind(b"\n", le) + 1], complete=False)


def _parse_truncated_line(data: bytes, sp: int, method: str, known: bool) -> HttpRequestHead | None:
    """Handle a capture that ends inside the request line (no LF after the method)."""
    # Without the " HTTP/1.x" suffix there is little evidence this is HTTP, so demand a known method.
    if not known:
        return None
    version = ""
    sp2 = data.find(b" ", sp + 1)
    if sp2 >= 0:
        tail = data[sp2 + 1 :]
        if tail.endswith(b"\r"):
            tail = tail[:-1]
        if tail == b"HTTP/1.1" or tail == b"HTTP/1.0":
            version = tail[5:].decode("ascii")
        elif not (b"HTTP/1.1".startswith(tail) or b"HTTP/1.0".startswith(tail)):
            return None
        target_b = data[sp + 1 : sp2]
    else:
        target_b = data[sp + 1 :]
    if not target_b:
        return None
    # A partial absolute-form prefix ("htt") is not yet a usable target; origin/asterisk forms are.
    if target_b[0] not in b"/*" and b"://" not in target_b and method != "CONNECT":
        return None
    return _build(method, target_b, version, b"", complete=False)


def _build(method: str, target_b: bytes, version: str, block: bytes, complete: bool) -> HttpRequestHead:
    """Make the head from the request-line parts and the header block (LF-delimited, starting with LF)."""
    target = target_b.translate(None, _CTL).decode("latin-1")
    host: str | None = None  # from an absolute-form URL, which overrides the Host header (RFC 9112 §3.2.2)
    authority: str | None = None  # from an authority-form target, used only without a Host header
    if target[:1] == "/":
        path, query = _split_path_query(target)
    elif target == "*":
        path, query = "*", None
    else:
        scheme_end = target.find("://")
        if scheme_end > 0 and target[:scheme_end].isalpha():
            target, path, query, host = _split_absolute(target, scheme_end)
        else:
            # Authority-form (CONNECT host:port) has no path.
            path, query, authority = "", None, target

    user_agent = traceparent = tracestate = None
    content_length = None
    chunked = False
    if len(block) > 1:
        lowered = block.lower()
        # Most requests lack most of these headers: the find runs in C and _value is only called on a hit.
        if host is None and (i := lowered.find(_H_HOST)) >= 0:
            host = _value(block, i + len(_H_HOST))
        if (i := lowered.find(_H_USER_AGENT)) >= 0:
            user_agent = _value(block, i + len(_H_USER_AGENT))
        if (i := lowered.find(_H_TRACEPARENT)) >= 0:
            traceparent = _value(block, i + len(_H_TRACEPARENT))
        if (i := lowered.find(_H_TRACESTATE)) >= 0:
            tracestate = _value(block, i + len(_H_TRACESTATE))
        if (i := lowered.find(_H_CONTENT_LENGTH)) >= 0:
            cl = _value(block, i + len(_H_CONTENT_LENGTH))
            if cl is not None and cl.isdigit() and cl.isascii() and len(cl) <= 18:
                content_length = int(cl)
        if (i := lowered.find(_H_TRANSFER_ENCODING)) >= 0:
            # The body is chunked when chunked is the final transfer coding (RFC 9112 §6.3).
            te = lowered[i + len(_H_TRANSFER_ENCODING) : lowered.find(b"\n", i + 1)]
            chunked = te.rpartition(b",")[2].strip(b" \t\r") == b"chunked"
    if host is None:
        host = authority
    # Positional arguments, in field order: measurably cheaper than keywords on this hot path.
    return HttpRequestHead(
        method,
        target,
        path,
        query,
        version,
        host,
        user_agent,
        traceparent,
        tracestate,
        content_length,
        chunked,
        complete,
    )


def _value(block: bytes, start: int) -> str | None:
    """Return the header value from ``start`` to the line end, control characters and OWS removed."""
    # The block always ends with LF, so the line end is always found.
    value = block[start : block.find(b"\n", start)].translate(None, _CTL).strip(b" ")
    return value.decode("latin-1") if value else None


def _split_path_query(target: str) -> tuple[str, str | None]:
    """Split an origin-form target into path and query, dropping any fragment."""
    q = target.find("?")
    f = target.find("#")
    if f >= 0 and (q < 0 or f < q):
        return target[:f], None
    if q >= 0:
        return target[:q], target[q + 1 : f] if f >= 0 else target[q + 1 :]
    return target, None


def _split_absolute(target: str, scheme_end: int) -> tuple[str, str, str | None, str | None]:
    """Return (target, path, query, host) for an absolute-form target such as "http://host/p?q"."""
    auth_start = scheme_end + 3
    auth_end = len(target)
    for sep in "/?#":
        i = target.find(sep, auth_start, auth_end)
        if i >= 0:
            auth_end = i
    authority = target[auth_start:auth_end]
    userinfo, at, hostport = authority.rpartition("@")
    if at:
        # Credentials in a URL must not reach telemetry; redact them as semconv prescribes for url.full.
        redacted = "REDACTED:REDACTED@" if ":" in userinfo else "REDACTED@"
        target = target[:auth_start] + redacted + hostport + target[auth_end:]
        auth_end = auth_start + len(redacted) + len(hostport)
    path, query = _split_path_query(target[auth_end:])
    # What follows the authority starts with "/", "?", "#" or nothing; an empty path is the root.
    return target, path or "/", query, hostport or None


# ---- spans ----


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


class HttpSpans:
    """HTTP/1.x records -> operations with the OpenTelemetry HTTP semantic conventions."""

    def __init__(self, stats: BuildStats, capture_query: bool = False) -> None:
        self.stats = stats
        self._capture_query = capture_query
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

    def describe(self, ev: RequestEvent, endpoints: Endpoints) -> Operation:
        """The operation for one HTTP/1.x request record (template and outcome together)."""
        t = self.template(ev, endpoints)
        attrs, status, message = self.finish(ev, t)
        return Operation(t.name, t.kind, {**t.attributes, **attrs}, status, message, t.parent)

    def template(self, ev: RequestEvent, endpoints: Endpoints) -> Template:
        """What the request head and the connection say: the same for every repeat of this head here."""
        head = parse_request(ev.req, ev.req_offset) if ev.req_offset < len(ev.req) else None
        flags = 0 if head else _UNPARSED
        server = ev.role == events.ROLE_SERVER
        attrs: dict[str, AttributeValue] = {}
        method = head.method if head else "_OTHER"
        canonical = canonical_method(method)
        attrs["http.request.method"] = canonical
        if canonical != method and head:
            attrs["http.request.method_original"] = method
        local, peer = endpoints.local, endpoints.peer
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
        if server:
            attrs["server.address"] = host or local or ""
            port = host_port if host_port is not None else ev.local_port
            if port:  # 0: a TLS session whose socket was not seen
                attrs["server.port"] = port
            if peer:
                attrs["client.address"] = peer
                attrs["client.port"] = ev.peer_port
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
        parent = None
        if server and head and head.traceparent:
            # The caller was traced (an SDK, or a tracer on another host): continue its trace.
            parent = parse_traceparent(head.traceparent, head.tracestate)
            flags |= _TRACEPARENT_BAD if parent is None else _TRACEPARENT_OK
        return Template(
            self._name(method, head.path if head else None),
            SpanKind.SERVER if server else SpanKind.CLIENT,
            attrs,
            parent,
            flags,
            # A traceparent differs on every request: caching it would only evict useful templates.
            cacheable=head is None or head.traceparent is None,
        )

    def finish(self, ev: RequestEvent, t: Template) -> tuple[dict[str, AttributeValue], StatusCode, str]:
        """The span's own attributes and status: what the response and the record's counters say."""
        flags = t.flags
        if flags:  # counted per request, whether the template was made now or cached
            if flags & _UNPARSED:
                self.stats.unparsed_requests += 1
            if flags & _TRACEPARENT_BAD:
                self.stats.invalid_traceparents += 1
            elif flags & _TRACEPARENT_OK:
                self.stats.traceparents += 1
        server = ev.role == events.ROLE_SERVER
        if server:
            attrs: dict[str, AttributeValue] = {"http.request.size": ev.bytes_in, "http.response.size": ev.bytes_out}
        else:
            attrs = {"http.request.size": ev.bytes_out, "http.response.size": ev.bytes_in}
        if ev.status:
            attrs["http.response.status_code"] = ev.status
        status, message = _status(ev, server)
        if status is StatusCode.ERROR:
            attrs["error.type"] = str(ev.status) if message == "" else "connection_closed"
        if ev.flags & events.FLAG_PIPELINED:
            attrs["otelbpf.http.pipelined"] = True
        if flags & _TRACEPARENT_OK:
            attrs["otelbpf.parent.source"] = "traceparent"
        return attrs, status, message


def _status(ev: RequestEvent, server: bool) -> tuple[StatusCode, str]:
    """Span status per semconv: 5xx on servers, 4xx/5xx on clients, broken connections always."""
    if ev.end == events.END_NO_RESPONSE:
        return StatusCode.ERROR, "connection closed before a response was sent"
    if ev.end == events.END_CONN_CLOSED:
        return StatusCode.ERROR, "connection closed before the response completed"
    threshold = 500 if server else 400
    if ev.status >= threshold:
        return StatusCode.ERROR, ""
    return StatusCode.UNSET, ""
