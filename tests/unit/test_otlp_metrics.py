"""OTLP metrics: settings resolution, encoding (decoded back with the proto classes), otelbpf's own counters,
and the export thread against the real receiver (both transports, failures merged into the next export)."""

from __future__ import annotations

import socket
import time

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otelbpf.cli import parse_args
from otelbpf.collector import Health
from otelbpf.export import METRICS, OtlpSettings, create_exporter, resolve_otlp_settings
from otelbpf.metrics import HTTP_BOUNDS_S, HTTP_SERVER_DURATION, Histogram, RequestMetrics, Stream, bounds_ns
from otelbpf.otlp_metrics import MetricsExporter, MetricsSettings, encode_request, resolve_metrics_settings
from otelbpf.runner import RunError, metrics_settings
from otelbpf.self_metrics import SPANS_EXPORTED, SPANS_LOST, Reading, SelfMetrics, own_resource
from otelbpf.spans import Resource, Span, SpanKind
from tests.otlp_receiver import OtlpReceiver, flatten_metrics

RES = Resource((("service.name", "shop"), ("process.pid", 7)))
MS = 1_000_000
GET = (("http.request.method", "GET"), ("http.response.status_code", 200))

# ---- settings


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ((None, None, None), {}, None),  # no endpoint: the terminal, no metrics
        ((None, None, None), {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, ("http://c:4317", "grpc")),
        (  # the base URL gets the metrics path on http/protobuf
            (None, "http/protobuf", None),
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/base/"},
            ("http://c:4318/base/v1/metrics", "http/protobuf"),
        ),
        (  # the signal's variables win over the common ones, and are used as they are
            (None, None, None),
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317",
                "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:9/custom",
                "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/protobuf",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:1",
            },
            ("http://m:9/custom", "http/protobuf"),
        ),
        (  # a flag wins, and gets /v1/metrics when it has no path
            ("http://flag:4318", "http/protobuf", None),
            {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://m:9"},
            ("http://flag:4318/v1/metrics", "http/protobuf"),
        ),
        (  # a scheme-less gRPC endpoint is plaintext unless INSECURE=false says otherwise
            (None, None, None),
            {"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "m:4317", "OTEL_EXPORTER_OTLP_METRICS_INSECURE": "false"},
            ("https://m:4317", "grpc"),
        ),
    ],
)
def test_metrics_endpoint_resolution(flags, env, expected):
    settings = resolve_otlp_settings(*flags, env, signal=METRICS)
    if expected is None:
        assert settings is None
    else:
        assert (settings.endpoint, settings.protocol, settings.signal) == (*expected, "metrics")


def test_metrics_headers_timeout_and_certificate_precedence():
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=generic",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_CERTIFICATE": "/generic.pem",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "t=traces",
    }
    s = resolve_otlp_settings(None, None, None, env, signal=METRICS)
    assert s == OtlpSettings("https://c:4317", "grpc", {"a": "generic"}, 2.5, "/generic.pem", "metrics")
    env |= {
        "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "m=metrics",
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "750",
        "OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE": "/metrics.pem",
    }
    s = resolve_otlp_settings(None, None, None, env, signal=METRICS)
    assert (s.headers, s.timeout_s, s.certificate) == ({"m": "metrics"}, 0.75, "/metrics.pem")
    traces = resolve_otlp_settings(None, None, None, env)
    assert (traces.headers, traces.timeout_s, traces.certificate, traces.signal) == (
        {"t": "traces"}, 2.5, "/generic.pem", "traces",
    )  # fmt: skip


def test_a_missing_certificate_is_a_one_line_error():
    settings = OtlpSettings("https://c:4318/v1/metrics", "http/protobuf", certificate="/no/such.pem", signal=METRICS)
    with pytest.raises(ValueError, match="no/such.pem"):
        create_exporter(settings)


def test_metrics_on_off_interval_and_temporality():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}
    s = resolve_metrics_settings(None, None, None, env)
    assert (s.interval_s, s.temporality, s.histograms_delta, s.counters_delta) == (60.0, "cumulative", False, False)
    assert resolve_metrics_settings(None, None, None, env, enabled=False) is None
    assert resolve_metrics_settings(None, None, None, env | {"OTEL_METRICS_EXPORTER": "none"}) is None
    assert resolve_metrics_settings(None, None, None, env | {"OTEL_METRICS_EXPORTER": "otlp"}) is not None
    assert resolve_metrics_settings(None, None, None, {}) is None  # terminal mode
    env |= {"OTEL_METRIC_EXPORT_INTERVAL": "1500", "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "Delta"}
    s = resolve_metrics_settings(None, None, None, env)
    assert (s.interval_s, s.temporality, s.histograms_delta, s.counters_delta) == (1.5, "delta", True, True)
    s = resolve_metrics_settings(None, None, None, env, interval_s=0.25, temporality="lowmemory")
    assert (s.interval_s, s.temporality, s.histograms_delta, s.counters_delta) == (0.25, "lowmemory", True, False)


@pytest.mark.parametrize(
    ("env", "kw", "match"),
    [
        ({"OTEL_METRIC_EXPORT_INTERVAL": "soon"}, {}, "milliseconds"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "0"}, {}, "positive"),
        ({}, {"interval_s": 0.0}, "--metric-export-interval"),
        ({"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "sometimes"}, {}, "cumulative, delta, lowmemory"),
        ({"OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "http/json"}, {}, "not supported"),
    ],
)
def test_bad_metrics_settings_are_errors(env, kw, match):
    with pytest.raises(ValueError, match=match):
        resolve_metrics_settings(None, None, None, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", **env}, **kw)


# ---- encoding


def histogram(*durations: int) -> Histogram:
    h = Histogram(bounds_ns(HTTP_SERVER_DURATION))
    for d in durations:
        h.record(d)
    return h


def test_encoding_decodes_back_exactly():
    own = own_resource({"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test,service.name=nope"})
    reading = Reading(health(exported=23, lost={"queue_full": 2, "sampled_out": 0}), 5000, 1)
    streams = [
        Stream(RES, HTTP_SERVER_DURATION, {GET: histogram(3 * MS, 3 * MS, 40 * MS)}, 10, 20, False),
        *SelfMetrics(lambda final: reading, own, delta=True, clock_ns=lambda: 30).collect(),
    ]
    request = ExportMetricsServiceRequest.FromString(encode_request(streams, "9.9").SerializeToString())
    rm_app, rm_own = request.resource_metrics
    assert {kv.key: kv.value.string_value or kv.value.int_value for kv in rm_app.resource.attributes} == {
        "service.name": "shop", "process.pid": 7,
    }  # fmt: skip
    (sm,) = rm_app.scope_metrics
    assert (sm.scope.name, sm.scope.version) == ("otelbpf", "9.9")
    (m,) = sm.metrics
    assert (m.name, m.unit, m.histogram.aggregation_temporality) == ("http.server.request.duration", "s", 2)
    (p,) = m.histogram.data_points
    assert (p.start_time_unix_nano, p.time_unix_nano, p.count) == (10, 20, 3)
    assert p.sum == pytest.approx(0.046) and (p.min, p.max) == (0.003, 0.04)
    assert list(p.explicit_bounds) == list(HTTP_BOUNDS_S)
    assert list(p.bucket_counts) == [2, 0, 0, 1] + [0] * 11
    assert {kv.key for kv in p.attributes} == {"http.request.method", "http.response.status_code"}

    points = {(pt.metric, tuple(pt.attributes.items())): pt for pt in flatten_metrics(request, "test")}
    own_attrs = points[("otelbpf.spans.exported", ())].resource
    assert own_attrs["service.name"] == "otelbpf" and own_attrs["deployment.environment"] == "test"
    exported = points[("otelbpf.spans.exported", ())]
    assert (exported.kind, exported.temporality, exported.monotonic, exported.value) == ("sum", 1, True, 23)
    assert points[("otelbpf.spans.lost", (("otelbpf.loss.reason", "queue_full"),))].value == 2
    assert points[("otelbpf.spans.lost", (("otelbpf.loss.reason", "sampled_out"),))].value == 0
    assert points[("otelbpf.rate_limit", ())].kind == "gauge"
    assert points[("otelbpf.rate_limit", ())].value == 5000
    assert points[("otelbpf.metrics.export.failures", ())].value == 1
    assert points[("otelbpf.ringbuf.bytes", ())].unit == "By"


def health(exported: int = 0, lost: dict[str, int] | None = None, built: int = 0) -> Health:
    return Health(
        kernel={}, requests_seen=built, spans_built=built, spans_exported=exported, queued=0,
        lost=lost or {}, unfinished=0, records=built, record_bytes=built * 100,
    )  # fmt: skip


def test_self_metrics_deltas_and_totals():
    readings = iter([health(exported=10), health(exported=25, lost={"evicted": 3})])
    delta = SelfMetrics(lambda final: Reading(next(readings), 0, 0), RES, delta=True)
    first = {st.instrument: st for st in delta.collect()}
    second = {st.instrument: st for st in delta.collect(final=True)}
    assert first[SPANS_EXPORTED].points == {(): 10} and second[SPANS_EXPORTED].points == {(): 15}
    assert second[SPANS_EXPORTED].start_ns == first[SPANS_EXPORTED].time_ns
    assert second[SPANS_LOST].points == {(("otelbpf.loss.reason", "evicted"),): 3}
    readings = iter([health(exported=10), health(exported=25)])
    total = SelfMetrics(lambda final: Reading(next(readings), 0, 0), RES, delta=False)
    assert [{st.instrument: st for st in total.collect()}[SPANS_EXPORTED].points[()] for _ in range(2)] == [10, 25]


# ---- the export thread against the real receiver


@pytest.fixture(scope="module")
def receiver():
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
def rx(receiver):
    receiver.fail_metrics_with(None)
    with receiver._lock:
        receiver._points.clear()
        receiver._metric_requests.clear()
    return receiver


def server_span(duration_ns: int) -> Span:
    return Span(b"t" * 16, b"s" * 8, "GET /x", SpanKind.SERVER, 0, duration_ns, RES, dict(GET))


def exporter_for(rx: OtlpReceiver, protocol: str, delta: bool) -> tuple[MetricsExporter, RequestMetrics]:
    base = rx.grpc_endpoint if protocol == "grpc" else rx.http_endpoint
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": base, "OTEL_EXPORTER_OTLP_METRICS_HEADERS": "tenant=t1"}
    settings = resolve_metrics_settings(None, protocol, None, env)
    assert isinstance(settings, MetricsSettings)
    requests = RequestMetrics(delta=delta)
    exporter = MetricsExporter(create_exporter(settings.otlp), interval_s=3600, scope_version="1.0")
    exporter.add_source(lambda final: requests.collect())
    return exporter, requests


def total_count(rx: OtlpReceiver) -> list[tuple[int, int]]:
    """(count, temporality) of every http.server.request.duration point received, in order."""
    return [(p.count, p.temporality) for p in rx.metric_points("http.server.request.duration")]


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_export_reaches_the_receiver(rx, protocol):
    exporter, requests = exporter_for(rx, protocol, delta=False)
    requests.record([server_span(2 * MS)] * 23)
    assert exporter.export_once()
    exporter.shutdown(5.0)  # the last export: the same cumulative total again
    assert total_count(rx) == [(23, 2), (23, 2)]
    (first, _) = rx.metric_requests()
    assert first.headers["tenant"] == "t1"
    assert first.path == ("" if protocol == "grpc" else "/v1/metrics")
    assert rx.requests() == []  # the trace API sees no metrics


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_failed_delta_export_is_merged_into_the_next(rx, protocol):
    exporter, requests = exporter_for(rx, protocol, delta=True)
    requests.record([server_span(2 * MS)] * 5)
    rx.fail_metrics_with(503, times=1)
    assert not exporter.export_once()
    requests.record([server_span(2 * MS)] * 2)
    assert exporter.export_once()
    exporter.shutdown(5.0)  # nothing new: no point sent
    assert total_count(rx) == [(7, 1)]
    assert exporter.stats.failures == 1 and exporter.stats.points_dropped == 0
    assert exporter.notes()["metric exports failed"] == 1


def test_a_failed_cumulative_export_is_carried_by_the_next(rx):
    exporter, requests = exporter_for(rx, "grpc", delta=False)
    requests.record([server_span(2 * MS)] * 5)
    rx.fail_metrics_with(503, times=1)
    assert not exporter.export_once()
    requests.record([server_span(2 * MS)] * 2)
    assert exporter.export_once()
    assert total_count(rx) == [(7, 2)]
    exporter.stop()


def test_a_permanent_failure_drops_the_data_counted(rx):
    exporter, requests = exporter_for(rx, "http/protobuf", delta=True)
    requests.record([server_span(2 * MS)] * 5)
    rx.fail_metrics_with(400, times=1)
    assert not exporter.export_once()
    assert exporter.stats.points_dropped == 1
    requests.record([server_span(2 * MS)])
    assert exporter.export_once()
    assert total_count(rx) == [(1, 1)]
    exporter.stop()


def test_the_thread_exports_every_interval(rx):
    settings = resolve_metrics_settings(None, "grpc", None, {"OTEL_EXPORTER_OTLP_ENDPOINT": rx.grpc_endpoint})
    requests = RequestMetrics()
    exporter = MetricsExporter(create_exporter(settings.otlp), interval_s=0.05)
    exporter.add_source(lambda final: requests.collect())
    requests.record([server_span(MS)] * 3)
    exporter.start()
    deadline = time.monotonic() + 5
    while len(rx.metric_requests()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    exporter.shutdown(5.0)
    assert len(rx.metric_requests()) >= 3  # two periodic exports and the last one
    assert {c for c, _ in total_count(rx)} == {3}


def test_shutdown_with_a_dead_backend_is_bounded():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_TIMEOUT": "300"}
    settings = resolve_metrics_settings(None, "http/protobuf", None, env)
    requests = RequestMetrics()
    exporter = MetricsExporter(create_exporter(settings.otlp), interval_s=3600)
    exporter.add_source(lambda final: requests.collect())
    requests.record([server_span(MS)])
    exporter.start()
    started = time.monotonic()
    exporter.shutdown(2.0)
    assert time.monotonic() - started < 2.5
    assert exporter.stats.failures == 1 and exporter.stats.exports == 0


def test_flags_reach_the_settings():
    args = parse_args(["run", "--otlp-endpoint", "http://c:4317", "--metric-export-interval", "2.5",
                       "--metric-temporality", "lowmemory"], {})  # fmt: skip
    s = metrics_settings(args, {"OTEL_METRIC_EXPORT_INTERVAL": "100", "OTEL_METRICS_EXPORTER": "otlp"})
    assert (s.otlp.endpoint, s.interval_s, s.temporality) == ("http://c:4317", 2.5, "lowmemory")
    assert metrics_settings(parse_args(["run", "--otlp-endpoint", "c:1", "--no-metrics"], {}), {}) is None
    assert metrics_settings(parse_args(["run"], {}), {}) is None  # the terminal
    with pytest.raises(RunError, match="OTEL_METRIC_EXPORT_INTERVAL"):
        metrics_settings(parse_args(["run", "--otlp-endpoint", "c:1"], {}), {"OTEL_METRIC_EXPORT_INTERVAL": "x"})
