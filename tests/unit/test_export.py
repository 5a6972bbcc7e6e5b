"""Tests for otelbpf.export: encoding, settings resolution, exporters and the export queue."""

from __future__ import annotations

import logging
import socket
import threading
import time

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelbpf.export import (
    ExportError,
    ExportQueue,
    GrpcExporter,
    HttpExporter,
    OtlpSettings,
    create_exporter,
    encode_request,
    encode_spans,
    parse_headers,
    queue_settings_from_env,
    resolve_otlp_settings,
)
from otelbpf.spans import Resource, Span, SpanKind, SpanLink, StatusCode
from tests.otlp_receiver import OtlpReceiver, attributes

T0 = 1_700_000_000_000_000_000
RES_A = Resource((("service.name", "frontend"), ("process.pid", 100), ("host.arch", "amd64")))
RES_B = Resource((("service.name", "backend"), ("process.pid", 200), ("debug", True)))


def make_span(i: int, resource: Resource = RES_A, **kw: object) -> Span:
    fields: dict = dict(
        trace_id=bytes([1] * 15 + [i % 256 + 1]),
        span_id=(i + 1).to_bytes(8, "big"),
        name=f"GET /items/{i}",
        kind=SpanKind.SERVER,
        start_ns=T0 + i * 1000,
        end_ns=T0 + i * 1000 + 500,
        resource=resource,
        attributes={"http.request.method": "GET", "http.response.status_code": 200, "i": i},
    )
    fields.update(kw)
    return Span(**fields)


@pytest.fixture(scope="module")
def receiver():
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
def rx(receiver):
    """The shared receiver, reset between tests."""
    receiver.fail_with(None)
    with receiver._lock:
        receiver._spans.clear()
        receiver._requests.clear()
    return receiver


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- encoding


def test_encode_round_trip_exact_fields():
    parent = make_span(
        0,
        attributes={"s": "x", "b": True, "n": 1, "f": 1.5, "neg": -0.0, "big": 2**62},
        status=StatusCode.ERROR,
        status_message="boom",
        trace_state="k=v",
    )
    child = make_span(1, RES_B, kind=SpanKind.CLIENT, parent_span_id=parent.span_id, attributes={"b": 1})
    other = make_span(2, attributes={"b": False, "n": True})
    req = ExportTraceServiceRequest.FromString(encode_spans([parent, child, other], "9.9"))

    assert len(req.resource_spans) == 2  # grouped by resource, first-seen order
    ra, rb = req.resource_spans
    assert attributes(ra.resource.attributes) == {
        "service.name": "frontend",
        "process.pid": 100,
        "host.arch": "amd64",
    }
    assert attributes(rb.resource.attributes) == {
        "service.name": "backend",
        "process.pid": 200,
        "debug": True,
    }
    assert rb.resource.attributes[2].value.WhichOneof("value") == "bool_value"
    for rs in (ra, rb):
        assert len(rs.scope_spans) == 1
        assert (rs.scope_spans[0].scope.name, rs.scope_spans[0].scope.version) == ("otelbpf", "9.9")
    p, o = ra.scope_spans[0].spans
    (c,) = rb.scope_spans[0].spans

    assert p.trace_id == parent.trace_id and p.span_id == parent.span_id
    assert p.parent_span_id == b""
    assert p.name == "GET /items/0" and p.kind == 2 and p.trace_state == "k=v"
    assert (p.start_time_unix_nano, p.end_time_unix_nano) == (T0, T0 + 500)
    assert (p.status.code, p.status.message) == (2, "boom")
    kinds = {kv.key: kv.value.WhichOneof("value") for kv in p.attributes}
    assert kinds == {
        "s": "string_value", "b": "bool_value", "n": "int_value",
        "f": "double_value", "neg": "double_value", "big": "int_value",
    }  # fmt: skip
    assert attributes(p.attributes) == {"s": "x", "b": True, "n": 1, "f": 1.5, "neg": -0.0, "big": 2**62}

    assert c.parent_span_id == parent.span_id and c.kind == 3
    assert c.HasField("status") is False
    # True == 1 hash alike: the attribute cache must not hand an int back for a bool or vice versa.
    assert c.attributes[0].value.WhichOneof("value") == "int_value"
    assert [kv.value.WhichOneof("value") for kv in o.attributes] == ["bool_value", "bool_value"]


def test_encode_request_empty_and_same_resource_instances():
    assert encode_spans([], "1") == b""
    twin = Resource(RES_A.attributes)  # equal but distinct object -> same ResourceSpans
    req = encode_request([make_span(0), make_span(1, twin)], "1")
    assert len(req.resource_spans) == 1 and len(req.resource_spans[0].scope_spans[0].spans) == 2


LINKS = [
    SpanLink(bytes([7] * 16), bytes([8] * 8), "vendor=x", (("messaging.batch", "b1"), ("n", 3), ("ok", True))),
    SpanLink(bytes([9] * 16), bytes([10] * 8)),
]


def link_tuples(pb_span) -> list[tuple]:
    """A decoded span's links as (trace_id, span_id, trace_state, [(key, value type, value)])."""
    return [
        (
            link.trace_id,
            link.span_id,
            link.trace_state,
            [(kv.key, kv.value.WhichOneof("value"), attributes([kv])[kv.key]) for kv in link.attributes],
        )
        for link in pb_span.links
    ]


EXPECTED_LINKS = [
    (bytes([7] * 16), bytes([8] * 8), "vendor=x",
     [("messaging.batch", "string_value", "b1"), ("n", "int_value", 3), ("ok", "bool_value", True)]),
    (bytes([9] * 16), bytes([10] * 8), "", []),
]  # fmt: skip


@pytest.mark.parametrize("path", ["protobuf_objects", "otlp_wire"])
def test_links_round_trip_through_both_encoders(path):
    linked = make_span(0, links=list(LINKS), trace_state="k=v")
    plain = make_span(1)
    if path == "protobuf_objects":
        req = encode_request([linked, plain], "1")
    else:
        req = ExportTraceServiceRequest.FromString(encode_spans([linked, plain], "1"))
    got, other = req.resource_spans[0].scope_spans[0].spans
    assert link_tuples(got) == EXPECTED_LINKS
    assert (got.trace_state, got.span_id, len(other.links)) == ("k=v", linked.span_id, 0)


# ---- settings


@pytest.mark.parametrize(
    "flags, env, expected",
    [
        ((None, None, None), {}, None),
        ((None, None, None), {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, None),
        ((None, None, None), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, ("http://c:4317", "grpc")),
        ((None, None, None), {"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317"}, ("http://c:4317", "grpc")),
        ((None, None, None), {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c"}, ("https://c:4317", "grpc")),
        (
            (None, None, None),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317", "OTEL_EXPORTER_OTLP_INSECURE": "false"},
            ("https://c:4317", "grpc"),
        ),
        (
            (None, None, None),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
            ("http://c:4318/v1/traces", "http/protobuf"),
        ),
        (
            (None, "http/protobuf", None),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/base/"},
            ("http://c:4318/base/v1/traces", "http/protobuf"),
        ),
        (  # signal-specific endpoint is used as is, and wins over the generic one
            (None, "http/protobuf", None),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:1", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:2"},
            ("http://b:2", "http/protobuf"),
        ),
        (  # signal-specific protocol wins over the generic one
            (None, None, None),
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            ("http://c:4318/v1/traces", "http/protobuf"),
        ),
        (  # flags win over env; a flag without a path gets /v1/traces
            ("https://flag:443", "http/protobuf", None),
            {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env:1/x", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            ("https://flag:443/v1/traces", "http/protobuf"),
        ),
        (
            ("http://flag:4318/custom", "http/protobuf", None),
            {},
            ("http://flag:4318/custom", "http/protobuf"),
        ),
        (("flag:4318", "http/protobuf", None), {}, ("http://flag:4318/v1/traces", "http/protobuf")),
        (("flag:9", None, None), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:1"}, ("http://flag:9", "grpc")),
        (("", None, None), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:1"}, ("http://env:1", "grpc")),
        (("[::1]:4317", None, None), {}, ("http://[::1]:4317", "grpc")),
    ],
)
def test_resolve_endpoint_and_protocol(flags, env, expected):
    settings = resolve_otlp_settings(*flags, env)
    if expected is None:
        assert settings is None
    else:
        assert (settings.endpoint, settings.protocol) == expected


def test_resolve_headers_and_timeout_precedence():
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=generic",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
    }
    s = resolve_otlp_settings(None, None, None, env)
    assert s == OtlpSettings("http://c:4317", "grpc", {"a": "generic"}, 2.5)
    env |= {"OTEL_EXPORTER_OTLP_TRACES_HEADERS": "b=signal", "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "750"}
    s = resolve_otlp_settings(None, None, None, env)
    assert (s.headers, s.timeout_s) == ({"b": "signal"}, 0.75)
    assert resolve_otlp_settings(None, None, "c=flag", env).headers == {"c": "flag"}
    assert resolve_otlp_settings("h:1", None, None, {}).timeout_s == 10.0


def test_parse_headers_percent_decoding_and_whitespace():
    text = " api-key = secret%20value , x%3Dy=a%2Cb=c,, empty= ,tenant=t1 "
    assert parse_headers(text) == {"api-key": "secret value", "x=y": "a,b=c", "empty": "", "tenant": "t1"}


@pytest.mark.parametrize(
    "flags, env, match",
    [
        (
            (None, "http/json", None),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:1"},
            "http/json.*not supported",
        ),
        ((None, None, None), {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"}, "not supported"),
        ((None, "thrift", None), {}, "unknown OTLP protocol"),
        (("ftp://c:1", None, None), {}, "scheme must be http or https"),
        (("http://c:notaport", None, None), {}, "invalid port"),
        (("h:1", None, "novalue"), {}, "expected key=value"),
        (("h:1", None, "=v"), {}, "expected key=value"),
        (
            (None, None, None),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "h:1", "OTEL_EXPORTER_OTLP_TIMEOUT": "ten"},
            "number",
        ),
        (
            (None, None, None),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "h:1", "OTEL_EXPORTER_OTLP_TIMEOUT": "-5"},
            "positive",
        ),
        (
            (None, None, None),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "h:1", "OTEL_EXPORTER_OTLP_INSECURE": "yes"},
            "true or",
        ),
    ],
)
def test_resolve_invalid_values(flags, env, match):
    with pytest.raises(ValueError, match=match):
        resolve_otlp_settings(*flags, env)


def test_queue_settings_from_env():
    assert queue_settings_from_env({}) == {}
    env = {
        "OTEL_BSP_MAX_QUEUE_SIZE": "100",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "250",
    }
    assert queue_settings_from_env(env) == {
        "max_queue_spans": 100,
        "max_batch": 100,
        "schedule_delay_s": 0.25,
    }
    with pytest.raises(ValueError, match="OTEL_BSP_MAX_QUEUE_SIZE"):
        queue_settings_from_env({"OTEL_BSP_MAX_QUEUE_SIZE": "lots"})


# ---- end to end against the real receiver


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_queue_delivers_exact_spans_and_headers(rx, protocol):
    base = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": base, "OTEL_EXPORTER_OTLP_HEADERS": "Api-Key=s%20cret,tenant=t1"}
    settings = resolve_otlp_settings(None, protocol, None, env)
    queue = ExportQueue(create_exporter(settings), max_batch=10, schedule_delay_s=5.0, scope_version="1.2.3")
    spans = [make_span(i, RES_A if i % 2 else RES_B) for i in range(25)]
    assert queue.submit(spans[:12]) == 12 and queue.submit(spans[12:]) == 13
    assert queue.flush(5.0)
    queue.shutdown(2.0)

    got = rx.wait_for(25, timeout_s=1.0)
    assert len(got) == 25
    assert queue.stats().exported == 25 and sum(queue.stats().dropped.values()) == 0
    by_id = {r.span_id: r for r in got}
    for s in spans:
        r = by_id[s.span_id.hex()]
        assert (r.name, r.kind, r.trace_id, r.parent_span_id) == (s.name, 2, s.trace_id.hex(), "")
        assert (r.start_ns, r.end_ns, r.scope, r.scope_version) == (s.start_ns, s.end_ns, "otelbpf", "1.2.3")
        assert r.attributes == s.attributes
        assert r.resource == dict(s.resource.attributes)
        assert r.protocol == ("grpc" if protocol == "grpc" else "http")
    requests = rx.requests()
    assert [r.span_count for r in requests] == [10, 10, 5]
    for r in requests:
        assert r.headers["api-key"] == "s cret" and r.headers["tenant"] == "t1"
        if protocol != "grpc":
            assert r.path == "/v1/traces" and r.headers["content-type"] == "application/x-protobuf"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_links_reach_the_receiver(rx, protocol, monkeypatch):
    # The receiver's flattened spans have no links: capture the decoded requests it records.
    received = []
    record = rx._record

    def capture(proto, path, headers, request):
        received.append(request)
        return record(proto, path, headers, request)

    monkeypatch.setattr(rx, "_record", capture)
    base = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
    settings = resolve_otlp_settings(None, protocol, None, {"OTEL_EXPORTER_OTLP_ENDPOINT": base})
    queue = ExportQueue(create_exporter(settings), schedule_delay_s=5.0)
    assert queue.submit([make_span(0, links=list(LINKS)), make_span(1)]) == 2
    assert queue.flush(5.0)
    queue.shutdown(1.0)
    assert queue.stats().exported == 2
    (request,) = received
    linked, plain = request.resource_spans[0].scope_spans[0].spans
    assert link_tuples(linked) == EXPECTED_LINKS and len(plain.links) == 0


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_backend_down_drops_as_export_failed_without_hanging(protocol):
    port = closed_port()
    exporter = (
        GrpcExporter(f"127.0.0.1:{port}", {}, 1.0)
        if protocol == "grpc"
        else HttpExporter(f"http://127.0.0.1:{port}/v1/traces", {}, 1.0)
    )
    queue = ExportQueue(exporter, max_queue_spans=100, max_batch=10, max_retry_elapsed_s=0.4, initial_backoff_s=0.05)
    started = time.monotonic()
    assert queue.submit([make_span(i) for i in range(30)]) == 30
    assert queue.flush(10.0)
    stats = queue.stats()
    assert stats.exported == 0 and stats.dropped["export_failed"] == 30 and stats.queued == 0
    assert stats.retries >= 3 and stats.last_error
    # The queue stays bounded while the backend is down.
    assert queue.submit([make_span(i) for i in range(150)]) == 100
    assert queue.stats().dropped["queue_full"] == 50
    queue.shutdown(0.3)
    assert time.monotonic() - started < 6.0
    final = queue.stats()
    assert final.queued == 0
    assert final.dropped["export_failed"] + final.dropped["shutdown"] == 130


def test_grpc_unavailable_once_then_delivered(rx):
    rx.fail_with(grpc.StatusCode.UNAVAILABLE, times=1)
    queue = ExportQueue(GrpcExporter(rx.grpc_endpoint, {}, 2.0), initial_backoff_s=0.05)
    queue.submit([make_span(i) for i in range(3)])
    assert queue.flush(5.0)
    queue.shutdown(1.0)
    assert len(rx.spans()) == 3 and len(rx.requests()) == 2
    stats = queue.stats()
    assert (stats.exported, stats.retries, stats.dropped["export_failed"]) == (3, 1, 0)
    assert "UNAVAILABLE" in stats.last_error


def test_http_503_once_then_delivered(rx):
    rx.fail_with(503, times=1)
    queue = ExportQueue(HttpExporter(rx.http_endpoint + "/v1/traces", {}, 2.0), initial_backoff_s=0.05)
    queue.submit([make_span(i) for i in range(3)])
    assert queue.flush(5.0)
    queue.shutdown(1.0)
    assert len(rx.spans()) == 3 and len(rx.requests()) == 2
    assert (queue.stats().exported, queue.stats().retries) == (3, 1)


def test_http_error_classification_and_retry_after(rx):
    exporter = HttpExporter(rx.http_endpoint + "/v1/traces", {}, 2.0)
    payload = encode_spans([make_span(0)], "1")
    rx.fail_with(429, times=1, retry_after="3")
    with pytest.raises(ExportError) as e:
        exporter.export(payload, 1)
    assert e.value.retryable and e.value.retry_after_s == 3.0 and "429" in e.value.message
    rx.fail_with(400, times=1)
    with pytest.raises(ExportError) as e:
        exporter.export(payload, 1)
    assert not e.value.retryable and "injected failure" in e.value.message
    exporter.export(payload, 1)  # the same persistent connection still works after errors
    bad_path = HttpExporter(rx.http_endpoint + "/wrong", {}, 2.0)
    with pytest.raises(ExportError) as e:
        bad_path.export(payload, 1)
    assert not e.value.retryable and "404" in e.value.message


def test_grpc_non_retryable_is_dropped_without_retry(rx):
    rx.fail_with(grpc.StatusCode.INVALID_ARGUMENT)
    queue = ExportQueue(GrpcExporter(rx.grpc_endpoint, {}, 2.0), initial_backoff_s=0.05)
    queue.submit([make_span(0), make_span(1)])
    assert queue.flush(5.0)
    queue.shutdown(1.0)
    stats = queue.stats()
    assert (stats.exported, stats.retries, stats.dropped["export_failed"]) == (0, 0, 2)
    assert "INVALID_ARGUMENT" in stats.last_error


# ---- queue mechanics with a controllable exporter


class BlockingExporter:
    """Blocks every export until released; records batch sizes."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.batches: list[int] = []

    def export(self, payload: bytes, span_count: int) -> None:
        self.entered.set()
        assert self.release.wait(5.0)
        self.batches.append(span_count)


def test_queue_full_accounting_is_exact():
    exporter = BlockingExporter()
    queue = ExportQueue(exporter, max_queue_spans=10, max_batch=5, schedule_delay_s=0.01)
    assert queue.submit([make_span(i) for i in range(5)]) == 5
    assert exporter.entered.wait(2.0)  # the worker now holds one in-flight batch of 5
    assert queue.submit([make_span(i) for i in range(8)]) == 8
    assert queue.submit([make_span(i) for i in range(7)]) == 2
    assert queue.submit([make_span(0)]) == 0
    stats = queue.stats()
    assert stats.dropped["queue_full"] == 6 and stats.queued == 15  # 10 queued + 5 in flight
    exporter.release.set()
    assert queue.flush(5.0)
    queue.shutdown(1.0)
    stats = queue.stats()
    assert stats.exported == 15 and stats.dropped == {"queue_full": 6, "export_failed": 0, "shutdown": 0}
    assert exporter.batches == [5, 5, 5]


def test_submit_waiting_waits_for_room_then_counts_what_never_fit():
    exporter = BlockingExporter()
    queue = ExportQueue(exporter, max_queue_spans=10, max_batch=5, schedule_delay_s=0.01)
    assert queue.submit([make_span(i) for i in range(5)]) == 5
    assert exporter.entered.wait(2.0)  # one batch of 5 in flight, the queue empty
    # Room for 10 now; the other 15 wait for the exporter, which is let go a moment later.
    threading.Timer(0.2, exporter.release.set).start()
    assert queue.submit_waiting([make_span(i) for i in range(25)], timeout_s=5.0) == 25
    assert queue.flush(5.0)
    assert queue.stats().exported == 30 and queue.stats().dropped["queue_full"] == 0
    # A stuck exporter: after the timeout, what does not fit is dropped and counted, never lost silently.
    exporter.release.clear()
    exporter.entered.clear()
    queue.submit([make_span(i) for i in range(5)])
    assert exporter.entered.wait(2.0)
    started = time.monotonic()
    assert queue.submit_waiting([make_span(i) for i in range(14)], timeout_s=0.2) == 10
    assert 0.2 <= time.monotonic() - started < 1.0
    assert queue.stats().dropped["queue_full"] == 4
    exporter.release.set()
    queue.shutdown(5.0)


def test_shutdown_deadline_counts_unsent_spans():
    exporter = BlockingExporter()
    queue = ExportQueue(exporter, max_queue_spans=100, max_batch=4, schedule_delay_s=0.01)
    queue.submit([make_span(i) for i in range(10)])
    assert exporter.entered.wait(2.0)
    started = time.monotonic()
    queue.shutdown(0.2)
    assert time.monotonic() - started < 1.0
    stats = queue.stats()
    assert stats.dropped["shutdown"] == 10 and stats.exported == 0 and stats.queued == 0
    assert queue.submit([make_span(0)]) == 0 and queue.stats().dropped["shutdown"] == 11
    exporter.release.set()  # the abandoned in-flight export finishing later must not be double counted
    queue._thread.join(5.0)  # the worker settles that batch, then sees the abandon and exits
    assert not queue._thread.is_alive() and exporter.batches == [4]
    assert queue.stats().exported == 0 and queue.stats().dropped["shutdown"] == 11


class FailingExporter:
    def __init__(self) -> None:
        self.calls = 0

    def export(self, payload: bytes, span_count: int) -> None:
        self.calls += 1
        raise ExportError(True, "backend down")


def test_no_busy_loop_and_rate_limited_logging(caplog):
    exporter = FailingExporter()
    queue = ExportQueue(exporter, max_batch=1, schedule_delay_s=0.01, max_retry_elapsed_s=0.15, initial_backoff_s=0.05)
    with caplog.at_level(logging.WARNING, logger="otelbpf.export"):
        queue.submit([make_span(i) for i in range(4)])
        assert queue.flush(5.0)
        time.sleep(0.3)  # idle with a dead backend: no further attempts
    queue.shutdown(1.0)
    assert queue.stats().dropped["export_failed"] == 4
    assert exporter.calls <= 4 * 4  # a handful of back-off attempts per batch, never a spin
    calls = exporter.calls
    time.sleep(0.1)
    assert exporter.calls == calls
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "backend down" in warnings[0].getMessage()


def test_flush_waits_only_for_spans_submitted_before_it():
    exporter = BlockingExporter()
    queue = ExportQueue(exporter, max_batch=2, schedule_delay_s=10.0)
    assert queue.flush(0.1)  # nothing queued
    queue.submit([make_span(0)])
    assert not queue.flush(0.2)  # in flight, blocked
    exporter.release.set()
    assert queue.flush(2.0)
    queue.shutdown(1.0)
    assert queue.stats().exported == 1
