"""A real OTLP trace and metrics receiver (gRPC and HTTP/protobuf) for tests, with failure injection.

Traces and metrics are kept apart: ``spans``/``requests``/``wait_for``/``fail_with`` see traces only;
``metric_points``/``metric_requests``/``wait_for_metrics``/``fail_metrics_with`` see metrics only.
"""

from __future__ import annotations

import http.server
import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

logger = logging.getLogger(__name__)


@dataclass
class ReceivedSpan:
    """One received span, flattened to plain Python values."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    status_message: str
    trace_state: str
    resource: dict[str, Any]
    scope: str
    scope_version: str
    protocol: str
    # Span links: (trace_id hex, span_id hex, attributes).
    links: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


@dataclass
class ReceivedRequest:
    """One export request: transport, HTTP path (empty for gRPC), headers/metadata and span count."""

    protocol: str
    path: str
    headers: dict[str, str]
    span_count: int
    spans: list[ReceivedSpan] = field(default_factory=list)


def any_value(v: AnyValue) -> Any:
    """Convert an OTLP AnyValue to the matching Python value."""
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if which == "kvlist_value":
        return attributes(v.kvlist_value.values)
    return getattr(v, which)


def attributes(kvs: Any) -> dict[str, Any]:
    """Convert repeated KeyValue to a dict."""
    return {kv.key: any_value(kv.value) for kv in kvs}


def flatten(request: ExportTraceServiceRequest, protocol: str) -> list[ReceivedSpan]:
    """Flatten every span of a request into ReceivedSpan records."""
    out = []
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    ReceivedSpan(
                        name=s.name,
                        kind=s.kind,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(),
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                        attributes=attributes(s.attributes),
                        status_code=s.status.code,
                        status_message=s.status.message,
                        trace_state=s.trace_state,
                        resource=resource,
                        scope=ss.scope.name,
                        scope_version=ss.scope.version,
                        protocol=protocol,
                        links=[(ln.trace_id.hex(), ln.span_id.hex(), attributes(ln.attributes)) for ln in s.links],
                    )
                )
    return out


@dataclass
class ReceivedPoint:
    """One received metric data point, flattened: a histogram's count/sum/buckets, or a number's value."""

    metric: str
    kind: str  # "histogram", "sum" or "gauge"
    unit: str
    temporality: int  # AggregationTemporality: 1 delta, 2 cumulative, 0 for gauges
    monotonic: bool
    attributes: dict[str, Any]
    start_ns: int
    time_ns: int
    resource: dict[str, Any]
    scope: str
    protocol: str
    value: float | int | None = None  # sums and gauges
    count: int = 0  # histograms
    sum: float = 0.0
    bucket_counts: list[int] = field(default_factory=list)
    explicit_bounds: list[float] = field(default_factory=list)
    min: float | None = None
    max: float | None = None


@dataclass
class ReceivedMetricsRequest:
    """One metrics export request: transport, HTTP path (empty for gRPC), headers and its points."""

    protocol: str
    path: str
    headers: dict[str, str]
    points: list[ReceivedPoint] = field(default_factory=list)


def flatten_metrics(request: ExportMetricsServiceRequest, protocol: str) -> list[ReceivedPoint]:
    """Flatten every data point of a metrics request into ReceivedPoint records."""
    out = []
    for rm in request.resource_metrics:
        resource = attributes(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                which = m.WhichOneof("data")
                common = dict(metric=m.name, kind=which, unit=m.unit, resource=resource, scope=sm.scope.name,
                              protocol=protocol)  # fmt: skip
                if which == "histogram":
                    for p in m.histogram.data_points:
                        out.append(ReceivedPoint(
                            **common, temporality=m.histogram.aggregation_temporality, monotonic=True,
                            attributes=attributes(p.attributes), start_ns=p.start_time_unix_nano,
                            time_ns=p.time_unix_nano, count=p.count, sum=p.sum, bucket_counts=list(p.bucket_counts),
                            explicit_bounds=list(p.explicit_bounds), min=p.min if p.HasField("min") else None,
                            max=p.max if p.HasField("max") else None,
                        ))  # fmt: skip
                elif which in ("sum", "gauge"):
                    data = getattr(m, which)
                    temporality = data.aggregation_temporality if which == "sum" else 0
                    monotonic = data.is_monotonic if which == "sum" else False
                    for p in data.data_points:
                        value = getattr(p, p.WhichOneof("value")) if p.WhichOneof("value") else None
                        out.append(ReceivedPoint(
                            **common, temporality=temporality, monotonic=monotonic,
                            attributes=attributes(p.attributes), start_ns=p.start_time_unix_nano,
                            time_ns=p.time_unix_nano, value=value,
                        ))  # fmt: skip
    return out


class _Failure:
    """An injected failure: a status to answer with, for `remaining` more requests (None = forever)."""

    def __init__(self, status: Any, times: int | None, retry_after: str | None) -> None:
        self.status = status
        self.remaining = times
        self.retry_after = retry_after


class OtlpReceiver:
    """OTLP/gRPC and OTLP/HTTP trace receiver on 127.0.0.1 free ports; use as a context manager."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        self._requests: list[ReceivedRequest] = []
        self._grpc_failure: _Failure | None = None
        self._http_failure: _Failure | None = None
        self._points: list[ReceivedPoint] = []
        self._metric_requests: list[ReceivedMetricsRequest] = []
        self._metrics_failure: _Failure | None = None
        self._grpc_server: grpc.Server | None = None
        self._http_server: http.server.ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self.grpc_port = 0
        self.http_port = 0

    # ---- lifecycle

    def start(self) -> OtlpReceiver:
        """Start both servers."""
        self._grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Servicer(self), self._grpc_server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_MetricsServicer(self), self._grpc_server)
        self.grpc_port = self._grpc_server.add_insecure_port("127.0.0.1:0")
        self._grpc_server.start()

        receiver = self

        class Handler(_HttpHandler):
            owner = receiver

        self._http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._http_server.daemon_threads = True
        self.http_port = self._http_server.server_address[1]
        self._http_thread = threading.Thread(
            target=self._http_server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._http_thread.start()
        return self

    def stop(self) -> None:
        """Stop both servers."""
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None)
            self._grpc_server = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- endpoints and results

    @property
    def grpc_endpoint(self) -> str:
        """gRPC endpoint, e.g. ``http://127.0.0.1:43170``."""
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """HTTP base endpoint (append ``/v1/traces`` or ``/v1/metrics`` for a signal's URL)."""
        return f"http://127.0.0.1:{self.http_port}"

    def spans(self) -> list[ReceivedSpan]:
        """Spans received so far (successful requests only)."""
        with self._lock:
            return list(self._spans)

    def requests(self) -> list[ReceivedRequest]:
        """All requests received so far, including the ones answered with an injected failure."""
        with self._lock:
            return list(self._requests)

    def headers(self) -> list[dict[str, str]]:
        """Headers (HTTP, lower-cased names) or metadata (gRPC) of every request received."""
        return [r.headers for r in self.requests()]

    def wait_for(self, count: int, timeout_s: float = 5.0) -> list[ReceivedSpan]:
        """Wait until at least `count` spans arrived (or the timeout); return the spans."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while len(self._spans) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            return list(self._spans)

    def fail_with(self, status: Any, times: int | None = None, retry_after: str | None = None) -> None:
        """Answer with `status` (grpc.StatusCode for gRPC, int for HTTP) `times` times; None clears."""
        with self._lock:
            if status is None:
                self._grpc_failure = self._http_failure = None
            elif isinstance(status, grpc.StatusCode):
                self._grpc_failure = _Failure(status, times, retry_after)
            else:
                self._http_failure = _Failure(int(status), times, retry_after)

    # ---- metrics

    def metric_points(self, name: str | None = None) -> list[ReceivedPoint]:
        """Metric points received so far (successful requests only), of one metric if ``name`` is given."""
        with self._lock:
            return [p for p in self._points if name is None or p.metric == name]

    def metric_requests(self) -> list[ReceivedMetricsRequest]:
        """All metrics requests received so far, including the ones answered with an injected failure."""
        with self._lock:
            return list(self._metric_requests)

    def wait_for_metrics(self, name: str, timeout_s: float = 5.0) -> list[ReceivedPoint]:
        """Wait until at least one point of metric ``name`` arrived (or the timeout); return its points."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            while not any(p.metric == name for p in self._points):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._lock.wait(remaining)
            return [p for p in self._points if p.metric == name]

    def fail_metrics_with(self, status: Any, times: int | None = None) -> None:
        """Answer metrics requests (both transports) with ``status`` ``times`` times; None clears.

        ``status`` is an HTTP status; gRPC answers with UNAVAILABLE for 5xx/429, else INVALID_ARGUMENT.
        """
        with self._lock:
            self._metrics_failure = None if status is None else _Failure(int(status), times, None)

    def _record_metrics(
        self, protocol: str, path: str, headers: dict[str, str], request: ExportMetricsServiceRequest
    ) -> _Failure | None:
        """Record one metrics request; return the injected failure to answer with, if any."""
        points = flatten_metrics(request, protocol)
        with self._lock:
            failure = self._metrics_failure
            if failure is not None and failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._metrics_failure = None
            self._metric_requests.append(ReceivedMetricsRequest(protocol, path, headers, points))
            if failure is None:
                self._points.extend(points)
                self._lock.notify_all()
            return failure

    # ---- shared by both transports

    def _record(self, protocol: str, path: str, headers: dict[str, str], request: Any) -> _Failure | None:
        """Record one request; return the injected failure to answer with, if any."""
        spans = flatten(request, protocol)
        with self._lock:
            failure = self._grpc_failure if protocol == "grpc" else self._http_failure
            if failure is not None:
                if failure.remaining is not None:
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        if protocol == "grpc":
                            self._grpc_failure = None
                        else:
                            self._http_failure = None
            self._requests.append(ReceivedRequest(protocol, path, headers, len(spans), spans))
            if failure is None:
                self._spans.extend(spans)
                self._lock.notify_all()
            return failure


class _Servicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, owner: OtlpReceiver) -> None:
        self._owner = owner

    def Export(self, request: ExportTraceServiceRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        failure = self._owner._record("grpc", "", headers, request)
        if failure is not None:
            context.abort(failure.status, "injected failure")
        return ExportTraceServiceResponse()


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, owner: OtlpReceiver) -> None:
        self._owner = owner

    def Export(self, request: ExportMetricsServiceRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        headers = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        failure = self._owner._record_metrics("grpc", "", headers, request)
        if failure is not None:
            retryable = failure.status >= 500 or failure.status == 429
            code = grpc.StatusCode.UNAVAILABLE if retryable else grpc.StatusCode.INVALID_ARGUMENT
            context.abort(code, "injected failure")
        return ExportMetricsServiceResponse()


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    owner: OtlpReceiver
    protocol_version = "HTTP/1.1"  # keep-alive, like a real collector

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/v1/metrics":
            return self._metrics(body)
        if self.path != "/v1/traces":
            return self._reply(404, b"not found", "text/plain")
        if self.headers.get("Content-Type") != "application/x-protobuf":
            return self._reply(415, b"unsupported content type", "text/plain")
        try:
            request = ExportTraceServiceRequest.FromString(body)
        except Exception:
            return self._reply(400, b"bad protobuf", "text/plain")
        headers = {k.lower(): v for k, v in self.headers.items()}
        failure = self.owner._record("http", self.path, headers, request)
        if failure is not None:
            extra = {"Retry-After": failure.retry_after} if failure.retry_after else {}
            return self._reply(failure.status, b"injected failure", "text/plain", extra)
        self._reply(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")

    def _metrics(self, body: bytes) -> None:
        if self.headers.get("Content-Type") != "application/x-protobuf":
            return self._reply(415, b"unsupported content type", "text/plain")
        try:
            request = ExportMetricsServiceRequest.FromString(body)
        except Exception:
            return self._reply(400, b"bad protobuf", "text/plain")
        headers = {k.lower(): v for k, v in self.headers.items()}
        failure = self.owner._record_metrics("http", self.path, headers, request)
        if failure is not None:
            return self._reply(failure.status, b"injected failure", "text/plain")
        self._reply(200, ExportMetricsServiceResponse().SerializeToString(), "application/x-protobuf")

    def _reply(self, status: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base-class signature
        logger.debug("otlp receiver: " + format, *args)
