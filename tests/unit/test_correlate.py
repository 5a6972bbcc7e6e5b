"""Span mapping: kernel events in, spans with exact semantic-convention attributes out (no root)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from otelbpf import events
from otelbpf.clock import ClockMap, measure_offset
from otelbpf.correlate import IdGenerator, SpanBuilder, format_address, split_host
from otelbpf.events import RequestEvent
from otelbpf.resources import ResourceCache, detect_language, parse_resource_attributes
from otelbpf.spans import SpanKind, StatusCode
from tests.factories import http_event

OFFSET = 1_700_000_000_000_000_000


class FixedClock(ClockMap):
    def __init__(self) -> None:
        super().__init__(realtime_ns=lambda: OFFSET + 5, monotonic_ns=lambda: 5)


def event(req: bytes, role: int = events.ROLE_SERVER, status: int = 200, flags: int = 0, **kw) -> RequestEvent:
    """A request from this process (its resource is real), with the given head bytes."""
    return http_event(req=req, role=role, status=status, flags=flags, **{"pid": os.getpid(), **kw})


@pytest.fixture()
def builder() -> SpanBuilder:
    return SpanBuilder(ResourceCache(env={}), FixedClock(), IdGenerator(seed=7))


CURL = (
    b"GET /users/123/orders?token=SECRET HTTP/1.1\r\nHost: shop.local:8080\r\nUser-Agent: curl/7.88.1\r\n"
    b"Authorization: Bearer SECRET\r\nAccept: */*\r\n\r\n"
)


def test_server_span_exact(builder: SpanBuilder) -> None:
    span = builder.build(event(CURL))
    assert span.name == "GET /users/{id}/orders"
    assert span.kind is SpanKind.SERVER
    assert span.start_ns == OFFSET + 1_000 and span.end_ns == OFFSET + 5_000
    assert span.status is StatusCode.UNSET
    assert span.all_attributes() == {
        "http.request.method": "GET",
        "url.path": "/users/123/orders",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "network.protocol.name": "http",
        "network.transport": "tcp",
        "network.type": "ipv4",
        "user_agent.original": "curl/7.88.1",
        "server.address": "shop.local",
        "server.port": 8080,
        "client.address": "127.0.0.2",
        "client.port": 51000,
        "network.peer.address": "127.0.0.2",
        "network.peer.port": 51000,
        "network.local.address": "127.0.0.1",
        "network.local.port": 8080,
        "http.request.size": 120,
        "http.response.size": 900,
        "http.response.status_code": 200,
        "thread.id": 4242,
    }
    assert "SECRET" not in repr(span)


def test_query_only_when_asked() -> None:
    b = SpanBuilder(ResourceCache(env={}), FixedClock(), capture_query=True)
    span = b.build(event(CURL))
    assert span.all_attributes()["url.query"] == "token=SECRET"
    assert span.name == "GET /users/{id}/orders"


def test_client_span_url_full_and_sizes(builder: SpanBuilder) -> None:
    req = b"POST /api/v1/items?x=1 HTTP/1.1\r\nHost: 127.0.0.1:9000\r\nContent-Length: 3\r\n\r\nabc"
    span = builder.build(event(req, role=events.ROLE_CLIENT, status=201, local_port=51000, peer_port=9000))
    assert span.kind is SpanKind.CLIENT
    assert span.name == "POST /api/v1/items"
    assert span.all_attributes()["url.full"] == "http://127.0.0.1:9000/api/v1/items"
    assert span.all_attributes()["server.address"] == "127.0.0.1"
    assert span.all_attributes()["server.port"] == 9000
    assert span.all_attributes()["http.request.size"] == 900  # a client sends the request
    assert span.all_attributes()["http.response.size"] == 120
    assert "client.address" not in span.all_attributes()
    assert "abc" not in repr(span.all_attributes())


def test_client_default_port_omitted_from_url(builder: SpanBuilder) -> None:
    span = builder.build(event(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", role=events.ROLE_CLIENT, peer_port=80))
    assert span.all_attributes()["url.full"] == "http://example.com/"
    assert span.all_attributes()["server.port"] == 80


@pytest.mark.parametrize(
    ("role", "status", "end", "expected", "error_type"),
    [
        (events.ROLE_SERVER, 200, events.END_COMPLETE, StatusCode.UNSET, None),
        (events.ROLE_SERVER, 404, events.END_COMPLETE, StatusCode.UNSET, None),
        (events.ROLE_SERVER, 500, events.END_COMPLETE, StatusCode.ERROR, "500"),
        (events.ROLE_CLIENT, 404, events.END_COMPLETE, StatusCode.ERROR, "404"),
        (events.ROLE_CLIENT, 302, events.END_COMPLETE, StatusCode.UNSET, None),
        (events.ROLE_SERVER, 0, events.END_NO_RESPONSE, StatusCode.ERROR, "connection_closed"),
        (events.ROLE_CLIENT, 200, events.END_CONN_CLOSED, StatusCode.ERROR, "connection_closed"),
        (events.ROLE_SERVER, 200, events.END_CLOSE_DELIMITED, StatusCode.UNSET, None),
        (events.ROLE_SERVER, 200, events.END_INFERRED, StatusCode.UNSET, None),
    ],
)
def test_status_rules(
    builder: SpanBuilder, role: int, status: int, end: int, expected: StatusCode, error_type: str | None
) -> None:
    span = builder.build(event(b"GET /x HTTP/1.1\r\n\r\n", role=role, status=status, end=end))
    assert span.status is expected
    assert span.all_attributes().get("error.type") == error_type
    if status == 0:
        assert "http.response.status_code" not in span.all_attributes()


def test_pipelined_offset(builder: SpanBuilder) -> None:
    req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b/42 HTTP/1.1\r\nHost: x\r\n\r\n"
    span = builder.build(event(req, req_offset=req.index(b"GET /b"), flags=events.FLAG_PIPELINED))
    assert span.name == "GET /b/{id}"
    assert span.all_attributes()["otelbpf.http.pipelined"] is True


def test_unparsable_request_is_still_a_span(builder: SpanBuilder) -> None:
    span = builder.build(event(b"\x16\x03\x01\x02\x00garbage"))
    assert span.name == "HTTP"
    assert span.all_attributes()["http.request.method"] == "_OTHER"
    assert builder.stats.unparsed_requests == 1


def test_ipv6_and_v4_mapped_addresses() -> None:
    mapped = b"\x00" * 10 + b"\xff\xff" + socket.inet_aton("10.1.2.3")
    assert format_address(10, mapped) == "10.1.2.3"
    assert format_address(10, socket.inet_pton(socket.AF_INET6, "::1")) == "::1"
    assert format_address(0, b"\x00" * 16) is None
    assert split_host("[::1]:8080") == ("::1", 8080)
    assert split_host("example.com") == ("example.com", None)
    assert split_host("example.com:81") == ("example.com", 81)


def test_ids_random_valid_and_unique() -> None:
    ids = IdGenerator()
    trace_ids = {ids.trace_id() for _ in range(5000)}
    span_ids = {ids.span_id() for _ in range(5000)}
    assert len(trace_ids) == 5000 and len(span_ids) == 5000
    assert all(len(t) == 16 and any(t) for t in trace_ids)
    assert all(len(s) == 8 and any(s) for s in span_ids)


def test_clock_offset_is_exact_with_fixed_clocks() -> None:
    ticks = iter(range(100, 10_000, 10))
    assert measure_offset(lambda: 5_000_000, lambda: next(ticks)) == 5_000_000 - 105
    clock = FixedClock()
    assert clock.to_wall(123) == OFFSET + 123


def test_clock_matches_real_clocks() -> None:
    import time

    clock = ClockMap()
    mono = time.monotonic_ns()
    assert abs(clock.to_wall(mono) - time.time_ns()) < 5_000_000


def test_resource_from_a_real_process_env() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"],
        env={**os.environ, "OTEL_SERVICE_NAME": "my-svc", "OTEL_RESOURCE_ATTRIBUTES": "team=core,service.name=x"},
    )
    try:
        import time

        import psutil

        # Read it only after exec: before that /proc shows the parent's command line and environment.
        deadline = time.monotonic() + 10
        while "time.sleep(30)" not in " ".join(psutil.Process(child.pid).cmdline()):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        res = ResourceCache(env={}).get(child.pid)
        attrs = dict(res.attributes)
        # The process's own OTEL_SERVICE_NAME beats its OTEL_RESOURCE_ATTRIBUTES, as in the SDKs.
        assert attrs["service.name"] == "my-svc"
        assert attrs["team"] == "core"
        assert attrs["process.pid"] == child.pid
        assert attrs["process.executable.path"] == os.path.realpath(sys.executable)
        assert attrs["process.executable.name"] == os.path.basename(os.path.realpath(sys.executable))
        assert "time.sleep(30)" in attrs["process.command_line"]
        assert attrs["telemetry.sdk.name"] == "otelbpf"
        assert attrs["telemetry.sdk.language"] == "python"
        assert attrs["host.name"] == socket.gethostname()
        # otelbpf's own settings override what the process says about itself.
        over = dict(
            ResourceCache(env={"OTEL_SERVICE_NAME": "forced", "OTEL_RESOURCE_ATTRIBUTES": "env=prod"})
            .get(child.pid)
            .attributes
        )
        assert over["service.name"] == "forced" and over["env"] == "prod"
    finally:
        child.kill()
        child.wait()


def test_resource_of_a_gone_process() -> None:
    res = ResourceCache(env={}).get(2**22 + 12345)
    assert res.service_name == f"unknown_service:{2**22 + 12345}"


def test_resource_cache_is_bounded() -> None:
    cache = ResourceCache(env={}, capacity=3)
    for pid in range(2**22, 2**22 + 10):
        cache.get(pid)
    assert cache.evicted == 7


def test_resource_attribute_parsing_and_language() -> None:
    assert parse_resource_attributes("a=1, b = x%20y ,bad,=v,") == {"a": "1", "b": "x y"}
    assert detect_language("python3.11") == "python"
    assert detect_language("node") == "nodejs"
    assert detect_language("nginx") == "native"


def test_https_server_span(builder: SpanBuilder) -> None:
    """TLS plaintext gives the same span as plain HTTP, with the https scheme and the library."""
    span = builder.build(event(CURL, tls=events.TLS_OPENSSL))
    plain = builder.build(event(CURL))
    assert span.all_attributes()["url.scheme"] == "https"
    assert span.all_attributes()["otelbpf.tls.library"] == "openssl"
    rest = {k: v for k, v in span.all_attributes().items() if k not in ("url.scheme", "otelbpf.tls.library")}
    assert rest == {k: v for k, v in plain.all_attributes().items() if k != "url.scheme"}
    assert span.name == plain.name
    assert "SECRET" not in repr(span)


@pytest.mark.parametrize(
    ("host", "peer_port", "url"),
    [
        ("api.local", 443, "https://api.local/v1/x"),  # default port left out
        ("api.local:8443", 8443, "https://api.local:8443/v1/x"),
        ("api.local:80", 80, "https://api.local:80/v1/x"),  # 80 is not https's default
    ],
)
def test_https_client_url_full(builder: SpanBuilder, host: str, peer_port: int, url: str) -> None:
    req = f"GET /v1/x HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    ev = event(req, role=events.ROLE_CLIENT, tls=events.TLS_GNUTLS, local_port=51000, peer_port=peer_port)
    span = builder.build(ev)
    assert span.all_attributes()["url.full"] == url
    assert span.all_attributes()["otelbpf.tls.library"] == "gnutls"
    assert span.all_attributes()["server.port"] == peer_port


def test_tls_span_without_a_known_socket(builder: SpanBuilder) -> None:
    """A TLS session whose socket was never seen: no made-up port 0 or addresses."""
    req = b"GET /a HTTP/1.1\r\nUser-Agent: x\r\n\r\n"
    ev = event(req, tls=events.TLS_OPENSSL, family=0, local_port=0, peer_port=0, local_addr=b"\0" * 16)
    span = builder.build(ev)
    assert "server.port" not in span.all_attributes()
    assert "network.peer.address" not in span.all_attributes()
    assert "client.address" not in span.all_attributes()
    client = builder.build(
        event(req, role=events.ROLE_CLIENT, tls=events.TLS_OPENSSL, family=0, local_port=0, peer_port=0)
    )
    assert "server.port" not in client.all_attributes()
    assert "url.full" not in client.all_attributes()  # no Host header and no socket: nothing to name


TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_server_span_continues_the_callers_trace(builder: SpanBuilder) -> None:
    req = f"GET /a HTTP/1.1\r\nHost: x\r\ntraceparent: {TRACEPARENT}\r\ntracestate: rojo=1,congo=2\r\n\r\n".encode()
    span = builder.build(event(req))
    assert span.trace_id == bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    assert span.parent_span_id == bytes.fromhex("00f067aa0ba902b7")
    assert span.span_id not in (span.parent_span_id, b"\0" * 8)
    assert span.trace_state == "rojo=1,congo=2"
    assert span.all_attributes()["otelbpf.parent.source"] == "traceparent"
    assert builder.stats.invalid_traceparents == 0


def test_invalid_traceparent_starts_a_new_trace_and_is_counted(builder: SpanBuilder) -> None:
    req = b"GET /a HTTP/1.1\r\nHost: x\r\ntraceparent: 00-nonsense\r\n\r\n"
    span = builder.build(event(req))
    assert span.parent_span_id is None and span.trace_state == ""
    assert "otelbpf.parent.source" not in span.all_attributes()
    assert builder.stats.invalid_traceparents == 1


def test_client_span_keeps_its_own_trace(builder: SpanBuilder) -> None:
    """The traceparent a traced client sends names the caller's own span, not a parent of ours."""
    req = f"GET /a HTTP/1.1\r\nHost: x\r\ntraceparent: {TRACEPARENT}\r\n\r\n".encode()
    span = builder.build(event(req, role=events.ROLE_CLIENT))
    assert span.parent_span_id is None
    assert span.trace_id != bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
    assert builder.stats.invalid_traceparents == 0


def test_ids_are_reproducible_from_a_seed_across_pool_refills() -> None:
    """Replay gives the same ids as the recorded run: the pool is drawn from the seeded generator."""
    a, b = IdGenerator(seed=11), IdGenerator(seed=11)
    n = IdGenerator._BLOCK // 8 + 100  # past one refill of the pool
    assert [a.span_id() for _ in range(n)] == [b.span_id() for _ in range(n)]
    assert a.trace_id() == b.trace_id()
    assert IdGenerator(seed=12).span_id() != IdGenerator(seed=11).span_id()


def test_a_repeated_request_reuses_its_template_and_differs_only_in_its_outcome(builder: SpanBuilder) -> None:
    first = builder.build(event(CURL, status=200, bytes_out=900))
    again = builder.build(event(CURL, status=503, bytes_out=40, start_ns=9_000, end_ns=9_500, tid=77))
    assert again.shared is first.shared  # the connection's and the head's attributes: one shared block
    assert first.span_id != again.span_id and first.trace_id != again.trace_id
    assert again.all_attributes()["http.response.status_code"] == 503
    assert again.all_attributes()["http.response.size"] == 40
    assert again.all_attributes()["thread.id"] == 77
    assert again.all_attributes()["error.type"] == "503" and again.status is StatusCode.ERROR
    assert "error.type" not in first.all_attributes()
    assert (again.start_ns, again.end_ns) == (OFFSET + 9_000, OFFSET + 9_500)
    # Shared and own attributes never share a key: OTLP keys must be unique.
    assert not set(first.shared.items) & set(first.attributes)


def test_templates_are_per_connection(builder: SpanBuilder) -> None:
    a = builder.build(event(CURL, peer_port=51000))
    b = builder.build(event(CURL, peer_port=51001))
    assert a.shared is not b.shared
    assert b.all_attributes()["client.port"] == 51001


def test_counts_and_traceparents_stay_exact_with_templates(builder: SpanBuilder) -> None:
    for _ in range(3):
        builder.build(event(b"\x16\x03\x01 not http"))
    assert builder.stats.unparsed_requests == 3
    req = f"GET /a HTTP/1.1\r\nHost: x\r\ntraceparent: {TRACEPARENT}\r\n\r\n".encode()
    spans = [builder.build(event(req)) for _ in range(3)]
    assert builder.stats.traceparents == 3
    assert all(s.parent_span_id == bytes.fromhex("00f067aa0ba902b7") for s in spans)
    # A per-request traceparent never repeats: such heads are not cached.
    assert all(req not in key for key in builder._templates)


def test_template_cache_is_bounded() -> None:
    builder = SpanBuilder(ResourceCache(env={}), FixedClock(), IdGenerator(seed=7), max_templates=8)
    for i in range(50):
        span = builder.build(event(f"GET /item/{i} HTTP/1.1\r\nHost: x\r\n\r\n".encode()))
        assert span.all_attributes()["url.path"] == f"/item/{i}"
    assert len(builder._templates) <= 8
