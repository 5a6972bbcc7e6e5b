"""A real OTLP trace receiver (gRPC and HTTP/protobuf) for tests, with failure injection."""

from __future__ import annotations

import http.server
import logging
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
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
        """HTTP base endpoint (append ``/v1/traces`` for the traces URL)."""
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


class _HttpHandler(http.server.BaseHTTPRequestHandler):
    owner: OtlpReceiver
    protocol_version = "HTTP/1.1"  # keep-alive, like a real collector

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
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
