"""OTLP export: span encoding, gRPC/HTTP exporters, endpoint settings and the batching export queue.

This module and ``otlp_metrics`` are the only ones that know OTLP/OpenTelemetry types; everything upstream
works with ``otelbpf.spans``. Encoding builds protobuf messages directly because the OTel SDK's span
objects cost ~25 µs each, about four times the whole direct-protobuf path. The exporters and the
settings serve both signals, traces and metrics.
"""

from __future__ import annotations

import collections
import email.utils
import http.client
import logging
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource

from otelbpf import __version__
from otelbpf.kvlist import parse_kv_list
from otelbpf.otlp_wire import encode_export_request
from otelbpf.spans import AttributeValue, Resource, Span, StatusCode

logger = logging.getLogger(__name__)

SCOPE_NAME = "otelbpf"
GRPC_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
METRICS_GRPC_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
_USER_AGENT = f"otelbpf/{__version__}"

TRACES = "traces"
METRICS = "metrics"


@dataclass(frozen=True)
class _Signal:
    """What differs between exporting traces and metrics: the gRPC method and the response's shape."""

    grpc_method: str
    response: Any  # the generated Export*ServiceResponse class
    rejected_field: str  # the partial-success counter
    items: str  # what the counter counts, for the log


_SIGNALS = {
    TRACES: _Signal(GRPC_METHOD, ExportTraceServiceResponse, "rejected_spans", "spans"),
    METRICS: _Signal(METRICS_GRPC_METHOD, ExportMetricsServiceResponse, "rejected_data_points", "data points"),
}

# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------

# The hot path encodes with otlp_wire (hand-written wire format). encode_request builds the same
# request with the generated classes: the readable reference the tests compare otlp_wire against.


def _any_value(value: AttributeValue) -> AnyValue:
    """Map one Python attribute value to an OTLP AnyValue."""
    # bool before int: bool is an int subclass and must stay a bool on the wire.
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, tuple):
        return AnyValue(array_value=ArrayValue(values=[_any_value(v) for v in value]))
    return AnyValue(string_value=str(value))


def key_values(items: Any) -> list[KeyValue]:
    """Convert (key, value) pairs to KeyValue messages."""
    return [KeyValue(key=k, value=_any_value(v)) for k, v in items]


def encode_request(spans: Sequence[Span], scope_version: str) -> ExportTraceServiceRequest:
    """Build an ExportTraceServiceRequest: one ResourceSpans per distinct Resource, one scope each."""
    by_resource: dict[Resource, list[Span]] = {}
    for span in spans:
        group = by_resource.get(span.resource)
        if group is None:
            by_resource[span.resource] = [span]
        else:
            group.append(span)

    request = ExportTraceServiceRequest()
    scope = InstrumentationScope(name=SCOPE_NAME, version=scope_version)
    unset = StatusCode.UNSET
    for resource, group in by_resource.items():
        rs = request.resource_spans.add(resource=PbResource(attributes=key_values(resource.attributes)))
        # repeated.add(**kwargs) avoids building a temporary Span and copying it in.
        add = rs.scope_spans.add(scope=scope).spans.add
        for s in group:
            pb = add(
                trace_id=s.trace_id,
                span_id=s.span_id,
                parent_span_id=s.parent_span_id or b"",
                name=s.name,
                kind=s.kind,
                start_time_unix_nano=s.start_ns,
                end_time_unix_nano=s.end_ns,
                trace_state=s.trace_state,
                attributes=key_values(s.all_attributes().items()),
            )
            for link in s.links:
                pb.links.add(
                    trace_id=link.trace_id,
                    span_id=link.span_id,
                    trace_state=link.trace_state,
                    attributes=key_values(link.attributes),
                )
            if s.status != unset or s.status_message:
                status = pb.status
                status.code = s.status
                status.message = s.status_message
    return request


def encode_spans(spans: Sequence[Span], scope_version: str) -> bytes:
    """Serialize spans as an OTLP ExportTraceServiceRequest (hand-written wire encoding, see otlp_wire)."""
    return encode_export_request(spans, SCOPE_NAME, scope_version)


# --------------------------------------------------------------------------------------------------
# Exporters
# --------------------------------------------------------------------------------------------------


class _RateLimitedLog:
    """Logs the first warning at once, then at most one per interval, counting what it held back."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self._interval_s = interval_s
        self._last: float | None = None
        self._suppressed = 0
        self._lock = threading.Lock()

    def warn(self, msg: str, *args: object) -> None:
        now = time.monotonic()
        with self._lock:
            if self._last is not None and now - self._last < self._interval_s:
                self._suppressed += 1
                return
            suppressed, self._suppressed, self._last = self._suppressed, 0, now
        if suppressed:
            logger.warning(msg + " (%d similar warnings suppressed)", *args, suppressed)
        else:
            logger.warning(msg, *args)


class ExportError(Exception):
    """An export attempt failed; ``retryable`` says whether the same payload may succeed later."""

    def __init__(self, retryable: bool, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.message = message
        self.retry_after_s = retry_after_s


class Exporter(Protocol):
    """Sends one encoded Export{Trace,Metrics}ServiceRequest; raises ExportError on failure."""

    def export(self, payload: bytes, span_count: int) -> None: ...


_partial_log = _RateLimitedLog()


def _log_partial_success(response: Any, count: int, signal: _Signal = _SIGNALS[TRACES]) -> None:
    """Warn (rate-limited) about spans or data points the backend took the request for but rejected."""
    ps = response.partial_success
    rejected = getattr(ps, signal.rejected_field)
    if rejected or ps.error_message:
        _partial_log.warn("OTLP backend rejected %d of %d %s: %s", rejected, count, signal.items, ps.error_message)


def _read_certificate(path: str) -> bytes:
    """The PEM bundle named by OTEL_EXPORTER_OTLP_[SIGNAL_]CERTIFICATE, or a one-line ValueError."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"OTLP certificate {path!r}: {exc.strerror or exc}") from None


class GrpcExporter:
    """OTLP/gRPC exporter; ``http://`` or bare ``host:port`` is plaintext, ``https://`` uses TLS.

    ``certificate`` is a PEM file of trusted roots for TLS (default: the system's).
    """

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        signal: str = TRACES,
        certificate: str | None = None,
    ):
        import grpc  # imported lazily: ~70 ms, and not needed by console or HTTP users

        url = endpoint if "://" in endpoint else "http://" + endpoint
        parts = _split_url(url, "gRPC endpoint")
        target = f"{_url_host(parts)}:{parts.port or 4317}"
        if parts.scheme == "https":
            roots = _read_certificate(certificate) if certificate else None
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))
        else:
            self._channel = grpc.insecure_channel(target)
        self._signal = _SIGNALS[signal]
        # request_serializer=None passes our already-encoded bytes through untouched.
        self._call = self._channel.unary_unary(
            self._signal.grpc_method,
            request_serializer=None,
            response_deserializer=self._signal.response.FromString,
        )
        # gRPC metadata keys must be lowercase.
        self._metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        self._timeout_s = timeout_s
        self._grpc = grpc
        c = grpc.StatusCode
        # Retryable codes per the OTLP specification.
        self._retryable = {
            c.UNAVAILABLE, c.DEADLINE_EXCEEDED, c.RESOURCE_EXHAUSTED, c.ABORTED,
            c.CANCELLED, c.OUT_OF_RANGE, c.DATA_LOSS,
        }  # fmt: skip
        self.target = target

    def export(self, payload: bytes, span_count: int) -> None:
        """Send one request; raise ExportError on failure."""
        try:
            response = self._call(payload, timeout=self._timeout_s, metadata=self._metadata)
        except self._grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            name = code.name if code is not None else "UNKNOWN"
            raise ExportError(code in self._retryable, f"gRPC {name}: {details}") from None
        _log_partial_success(response, span_count, self._signal)

    def close(self) -> None:
        """Close the channel (cancels an in-flight call)."""
        self._channel.close()


class HttpExporter:
    """OTLP/HTTP protobuf exporter over one persistent http.client connection."""

    _RETRYABLE_STATUS = frozenset({429, 502, 503, 504})

    def __init__(
        self,
        endpoint: str,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 10.0,
        signal: str = TRACES,
        certificate: str | None = None,
    ):
        parts = _split_url(endpoint, "HTTP endpoint")
        self._signal = _SIGNALS[signal]
        self.url = endpoint
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._timeout_s = timeout_s
        self._headers = {"Content-Type": "application/x-protobuf", "User-Agent": _USER_AGENT}
        self._headers.update(headers or {})
        self._conn: http.client.HTTPConnection | None = None
        self._ssl = None
        if self._https:
            # Read here so a missing file is a one-line error at start, not a failure at the first export.
            cadata = _read_certificate(certificate).decode("ascii", "replace") if certificate else None
            self._ssl = ssl.create_default_context(cadata=cadata)

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout_s, context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout_s)

    def export(self, payload: bytes, span_count: int) -> None:
        """POST one request; raise ExportError on failure."""
        for attempt in (0, 1):
            reused = self._conn is not None
            conn = self._conn or self._connect()
            self._conn = conn
            try:
                conn.request("POST", self._path, body=payload, headers=self._headers)
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as e:
                self.close()
                # A kept-alive connection the server already closed fails on first use: retry once on
                # a fresh connection instead of burning a backoff round.
                if reused and attempt == 0 and isinstance(e, ConnectionError | http.client.BadStatusLine):
                    continue
                raise ExportError(True, f"POST {self.url}: {type(e).__name__}: {e}") from None
            break
        if resp.will_close:
            self.close()
        status = resp.status
        if 200 <= status < 300:
            if body and "protobuf" in (resp.getheader("Content-Type") or ""):
                try:
                    _log_partial_success(self._signal.response.FromString(body), span_count, self._signal)
                except Exception:  # a malformed success body must not turn success into failure
                    logger.debug("undecodable OTLP/HTTP response body (%d bytes)", len(body))
            return
        detail = f"HTTP {status} {resp.reason} from {self.url}"
        if body and "text" in (resp.getheader("Content-Type") or ""):
            detail += ": " + body[:200].decode("utf-8", "replace").strip()
        if status in self._RETRYABLE_STATUS:
            raise ExportError(True, detail, _parse_retry_after(resp.getheader("Retry-After")))
        raise ExportError(False, detail)

    def close(self) -> None:
        """Drop the connection; the next export reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


def _parse_retry_after(value: str | None) -> float | None:
    """Parse Retry-After (delta-seconds or HTTP-date) into seconds from now."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


# --------------------------------------------------------------------------------------------------
# Settings (OTLP exporter environment variables)
# --------------------------------------------------------------------------------------------------

PROTOCOLS = ("grpc", "http/protobuf")


@dataclass(frozen=True)
class OtlpSettings:
    """Resolved exporter settings; ``endpoint`` is ``scheme://host:port`` (gRPC) or the full signal URL."""

    endpoint: str
    protocol: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    certificate: str | None = None  # PEM file of trusted roots for an https endpoint
    signal: str = TRACES


def create_exporter(settings: OtlpSettings) -> GrpcExporter | HttpExporter:
    """Build the exporter the settings describe."""
    kind = GrpcExporter if settings.protocol == "grpc" else HttpExporter
    return kind(settings.endpoint, settings.headers, settings.timeout_s, settings.signal, settings.certificate)


def _split_url(url: str, what: str) -> urllib.parse.SplitResult:
    """Split and validate an http(s) URL, raising a one-line ValueError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{what} {url!r}: scheme must be http or https")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{what} {url!r}: invalid port") from None
    if not parts.hostname:
        raise ValueError(f"{what} {url!r}: missing host")
    return parts


def _url_host(parts: urllib.parse.SplitResult) -> str:
    host = parts.hostname or ""
    return f"[{host}]" if ":" in host else host


def _first(*values: str | None) -> str | None:
    """First non-empty value; the spec treats empty environment variables as unset."""
    for v in values:
        if v is not None and v.strip():
            return v.strip()
    return None


def parse_headers(text: str) -> dict[str, str]:
    """Parse ``k1=v1,k2=v2`` (W3C-baggage-like, percent-encoded) into a dict; malformed entries are errors."""
    return parse_kv_list(text, strict=True, what="OTLP header")


def _env(env: Mapping[str, str], suffix: str, signal: str = TRACES) -> tuple[str | None, str | None]:
    """The signal-specific then the generic OTEL_EXPORTER_OTLP_<suffix> values, in precedence order."""
    return env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_{suffix}"), env.get(f"OTEL_EXPORTER_OTLP_{suffix}")


def _parse_bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("true", "false"):
        return v == "true"
    raise ValueError(f"{name}={value!r}: expected true or false")


def resolve_otlp_settings(
    endpoint_flag: str | None,
    protocol_flag: str | None,
    headers_flag: str | None,
    env: Mapping[str, str],
    signal: str = TRACES,
) -> OtlpSettings | None:
    """Resolve one signal's exporter settings from flags and OTEL_EXPORTER_OTLP_* env; None if no endpoint.

    Flags (shared by both signals) come first, then OTEL_EXPORTER_OTLP_<SIGNAL>_*, then OTEL_EXPORTER_OTLP_*.
    """
    if signal not in _SIGNALS:
        raise ValueError(f"unknown OTLP signal {signal!r}")
    var = f"OTEL_EXPORTER_OTLP_{signal.upper()}_"
    protocol = (_first(protocol_flag, *_env(env, "PROTOCOL", signal)) or "grpc").lower()
    if protocol == "http/json":
        raise ValueError("OTLP protocol 'http/json' is not supported; use 'grpc' or 'http/protobuf'")
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown OTLP protocol {protocol!r}; use 'grpc' or 'http/protobuf'")

    if (raw := _first(endpoint_flag)) is not None:
        source = "flag"
    elif (raw := _first(env.get(var + "ENDPOINT"))) is not None:
        source = var + "ENDPOINT"
    elif (raw := _first(env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))) is not None:
        source = "OTEL_EXPORTER_OTLP_ENDPOINT"
    else:
        return None

    if protocol == "grpc":
        endpoint = _grpc_endpoint(raw, source, env, signal)
    else:
        url = raw if "://" in raw else "http://" + raw
        parts = _split_url(url, f"OTLP endpoint ({source})")
        if source == "OTEL_EXPORTER_OTLP_ENDPOINT":
            # A base URL: the signal path is appended, keeping any base path ("/x/" -> "/x/v1/traces").
            url = urllib.parse.urlunsplit(parts._replace(path=parts.path.rstrip("/") + f"/v1/{signal}"))
        elif source == "flag" and parts.path in ("", "/"):
            url = urllib.parse.urlunsplit(parts._replace(path=f"/v1/{signal}"))
        endpoint = url  # the signal-specific variable (or a flag with a path) is used as is

    headers_text = _first(headers_flag, *_env(env, "HEADERS", signal))
    headers = parse_headers(headers_text) if headers_text else {}

    timeout_s = 10.0
    for name in (var + "TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"):
        if (value := _first(env.get(name))) is not None:
            timeout_s = positive_number(name, value) / 1000.0
            break
    certificate = _first(*_env(env, "CERTIFICATE", signal))
    return OtlpSettings(endpoint, protocol, headers, timeout_s, certificate, signal)


def _grpc_endpoint(raw: str, source: str, env: Mapping[str, str], signal: str = TRACES) -> str:
    """Normalize a gRPC endpoint to ``http(s)://host:port``."""
    if "://" not in raw:
        # Spec: OTEL_EXPORTER_OTLP_[TRACES_]INSECURE decides for scheme-less endpoints. We default to
        # plaintext (the spec says TLS) because a bare host:port is almost always a local collector.
        value = _first(*_env(env, "INSECURE", signal))
        name = f"OTEL_EXPORTER_OTLP_[{signal.upper()}_]INSECURE"
        insecure = True if value is None else _parse_bool(name, value)
        raw = ("http://" if insecure else "https://") + raw
    parts = _split_url(raw, f"OTLP gRPC endpoint ({source})")
    if parts.path not in ("", "/"):
        logger.warning("ignoring path %r in OTLP gRPC endpoint %s", parts.path, raw)
    return f"{parts.scheme}://{_url_host(parts)}:{parts.port or 4317}"


def positive_number(name: str, value: str, unit: str = "") -> float:
    """A finite number above zero from the environment variable ``name``; ValueError naming it otherwise."""
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected {unit or 'a number'}") from None
    if not number > 0 or number == float("inf"):
        raise ValueError(f"{name}={value!r}: must be a positive number" + (f" of {unit}" if unit else ""))
    return number


def queue_settings_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """ExportQueue kwargs from OTEL_BSP_MAX_QUEUE_SIZE / _MAX_EXPORT_BATCH_SIZE / _SCHEDULE_DELAY (ms)."""
    kwargs: dict[str, Any] = {}
    for name, key in (
        ("OTEL_BSP_MAX_QUEUE_SIZE", "max_queue_spans"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "max_batch"),
    ):
        if (value := _first(env.get(name))) is not None:
            number = positive_number(name, value)
            if number != int(number):
                raise ValueError(f"{name}={value!r}: expected an integer")
            kwargs[key] = int(number)
    if (value := _first(env.get("OTEL_BSP_SCHEDULE_DELAY"))) is not None:
        kwargs["schedule_delay_s"] = positive_number("OTEL_BSP_SCHEDULE_DELAY", value) / 1000.0
    # Spec: a batch larger than the queue is clamped to the queue size.
    if "max_batch" in kwargs and kwargs["max_batch"] > kwargs.get("max_queue_spans", 20000):
        kwargs["max_batch"] = kwargs.get("max_queue_spans", 20000)
    return kwargs


# --------------------------------------------------------------------------------------------------
# Queue
# --------------------------------------------------------------------------------------------------

DROP_REASONS = ("queue_full", "export_failed", "shutdown")


@dataclass
class ExportStats:
    """Queue counters; ``dropped`` is keyed by reason: queue_full, export_failed, shutdown."""

    exported: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))
    retries: int = 0
    last_error: str = ""
    queued: int = 0  # accepted but not yet settled: the queue plus the in-flight batch


class BatchQueue:
    """Bounded span queue drained in batches by one background thread; subclasses implement ``_send``.

    Memory is bounded by ``max_queue_spans`` queued spans plus the one batch being sent. ``submit``
    never blocks on the consumer: what does not fit is dropped and counted.
    """

    def __init__(
        self,
        *,
        max_queue_spans: int = 20000,
        max_batch: int = 512,
        schedule_delay_s: float = 0.5,
        thread_name: str = "otelbpf-export",
    ) -> None:
        if max_queue_spans < 1 or max_batch < 1 or not schedule_delay_s > 0:
            raise ValueError("max_queue_spans and max_batch must be >= 1 and schedule_delay_s > 0")
        self._max_queue = max_queue_spans
        self._max_batch = min(max_batch, max_queue_spans)
        self._delay_s = schedule_delay_s
        self._queue: collections.deque[Span] = collections.deque()
        self._cond = threading.Condition()
        self._stats = ExportStats()
        # Monotonic span counters: flush() waits until every span accepted before it is settled.
        self._accepted = 0
        self._taken = 0
        self._settled = 0
        self._flush_target = 0
        self._inflight: list[Span] | None = None
        self._stopping = False
        self._abandoned = False
        self._abort = threading.Event()  # interrupts retry back-off once the shutdown deadline passes
        self._drop_log = _RateLimitedLog()
        self._fail_log = _RateLimitedLog()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._thread.start()

    # ---- caller side

    def submit(self, spans: Sequence[Span]) -> int:
        """Queue spans without blocking; return how many were accepted (the rest are counted dropped)."""
        n = len(spans)
        if not n:
            return 0
        with self._cond:
            if self._stopping:
                self._stats.dropped["shutdown"] += n
                return 0
            accepted = max(0, min(n, self._max_queue - len(self._queue)))
            wake = not self._queue or len(self._queue) + accepted >= self._max_batch
            self._queue.extend(spans if accepted == n else spans[:accepted])
            self._accepted += accepted
            rejected = n - accepted
            if rejected:
                self._stats.dropped["queue_full"] += rejected
                total = self._stats.dropped["queue_full"]
            if accepted and wake:
                self._cond.notify_all()
        if rejected:
            self._drop_log.warn("span queue full (%d spans): %d spans dropped so far", self._max_queue, total)
        return accepted

    def submit_waiting(self, spans: Sequence[Span], timeout_s: float = 10.0) -> int:
        """Queue spans, waiting up to timeout_s for room; what still does not fit is dropped and counted.

        For the final flush at shutdown: the linker then hands over every tree it holds at once (half a
        second of spans at the default window, as many as the queue holds at 40k spans/s), and nothing
        else needs the caller any more, so waiting beats dropping.
        """
        deadline = time.monotonic() + timeout_s
        accepted = i = 0
        while i < len(spans):
            with self._cond:
                room = self._max_queue - len(self._queue)
                if room <= 0 and not self._stopping and time.monotonic() < deadline:
                    self._cond.notify_all()  # the worker takes a full batch at once
                    self._cond.wait(max(0.0, min(deadline - time.monotonic(), 0.05)))
                    continue
            # Out of room and time (or stopping): submit counts what does not fit as dropped.
            chunk = spans[i:] if room <= 0 else spans[i : i + room]
            accepted += self.submit(chunk)
            i += len(chunk)
        return accepted

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Send everything queued so far; True if it was all settled (exported or dropped) in time."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            target = self._accepted
            self._flush_target = max(self._flush_target, target)
            self._cond.notify_all()
            while self._settled < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Flush, then stop the thread; spans still unsent at the deadline are dropped as "shutdown"."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            if self._stopping:
                return
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            with self._cond:
                self._abandoned = True
                lost = len(self._queue) + len(self._inflight or ())
                self._queue.clear()
                self._inflight = None  # the worker sees this and does not count the batch again
                self._stats.dropped["shutdown"] += lost
                self._settled += lost
                self._cond.notify_all()
            self._abort.set()
            if lost:
                logger.warning("shutdown deadline reached: dropped %d unsent spans", lost)
        self._close()

    def stats(self) -> ExportStats:
        """A consistent snapshot of the counters."""
        with self._cond:
            s = self._stats
            return ExportStats(
                exported=s.exported,
                dropped=dict(s.dropped),
                retries=s.retries,
                last_error=s.last_error,
                queued=len(self._queue) + len(self._inflight or ()),
            )

    # ---- worker side

    def _send(self, batch: list[Span]) -> str | None:
        """Deliver one batch; return None when delivered, else the drop reason."""
        raise NotImplementedError

    def _close(self) -> None:
        """Release the sink after shutdown."""

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                reason = self._send(batch)
            except Exception as e:  # a bug in a sink must not kill the thread and silently stop export
                logger.exception("span export raised unexpectedly")
                self._note_error(f"{type(e).__name__}: {e}")
                reason = "export_failed"
            self._settle(batch, reason)

    def _next_batch(self) -> list[Span] | None:
        """Wait until a batch is due (full, flush, shutdown or schedule delay) and take it."""
        with self._cond:
            due: float | None = None
            while True:
                if self._abandoned:
                    return None
                n = len(self._queue)
                if n >= self._max_batch or (n and (self._stopping or self._flush_target > self._taken)):
                    break
                if not n:
                    if self._stopping:
                        return None
                    due = None
                    self._cond.wait()
                    continue
                now = time.monotonic()
                if due is None:
                    due = now + self._delay_s
                elif now >= due:
                    break
                self._cond.wait(due - now)
            popleft = self._queue.popleft
            batch = [popleft() for _ in range(min(n, self._max_batch))]
            self._taken += len(batch)
            self._inflight = batch
            return batch

    def _settle(self, batch: list[Span], reason: str | None) -> None:
        with self._cond:
            if self._inflight is not batch:
                return  # shutdown() already counted it
            self._inflight = None
            if reason is None:
                self._stats.exported += len(batch)
            else:
                self._stats.dropped[reason] += len(batch)
            self._settled += len(batch)
            self._cond.notify_all()

    def _note_error(self, message: str, retry: bool = False) -> None:
        with self._cond:
            self._stats.last_error = message
            if retry:
                self._stats.retries += 1


class ExportQueue(BatchQueue):
    """Batches spans, encodes them to OTLP and exports them, retrying retryable failures with back-off."""

    def __init__(
        self,
        exporter: Exporter,
        *,
        max_queue_spans: int = 20000,
        max_batch: int = 512,
        schedule_delay_s: float = 0.5,
        max_retry_elapsed_s: float = 30.0,
        initial_backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        scope_version: str = "0.1.0",
    ) -> None:
        self._exporter = exporter
        self._max_retry_elapsed_s = max_retry_elapsed_s
        self._initial_backoff_s = initial_backoff_s
        self._max_backoff_s = max_backoff_s
        self._scope_version = scope_version
        self._failing = False
        super().__init__(max_queue_spans=max_queue_spans, max_batch=max_batch, schedule_delay_s=schedule_delay_s)

    def _send(self, batch: list[Span]) -> str | None:
        try:
            payload = encode_spans(batch, self._scope_version)
        except Exception as e:  # e.g. an out-of-range int attribute; retrying cannot help
            return self._give_up(batch, f"encoding failed: {type(e).__name__}: {e}")
        started = time.monotonic()
        backoff = self._initial_backoff_s
        while True:
            try:
                self._exporter.export(payload, len(batch))
            except ExportError as e:
                err = e
            except Exception as e:  # exporter bug: permanent, so we never spin on it
                err = ExportError(False, f"{type(e).__name__}: {e}")
            else:
                if self._failing:
                    self._failing = False
                    logger.info("OTLP export recovered")
                return None
            if self._abort.is_set():
                return "shutdown"
            if not err.retryable:
                return self._give_up(batch, err.message)
            # Full back-off spread over [backoff/2, backoff] so restarted collectors are not stampeded.
            delay = min(backoff, self._max_backoff_s) * random.uniform(0.5, 1.0)
            if err.retry_after_s is not None:
                delay = max(delay, err.retry_after_s)
            if time.monotonic() - started + delay > self._max_retry_elapsed_s:
                return self._give_up(batch, f"{err.message} (gave up after {self._max_retry_elapsed_s:g}s)")
            self._note_error(err.message, retry=True)
            if not self._failing:
                self._failing = True
                self._fail_log.warn("OTLP export failed, retrying: %s", err.message)
            logger.debug("retrying export of %d spans in %.2fs: %s", len(batch), delay, err.message)
            if self._abort.wait(delay):
                return "shutdown"
            backoff *= 2

    def _give_up(self, batch: list[Span], message: str) -> str:
        self._note_error(message)
        self._failing = True
        with self._cond:
            total = self._stats.dropped["export_failed"] + len(batch)
        self._fail_log.warn("export failed, dropped %d spans (%d so far): %s", len(batch), total, message)
        return "export_failed"

    def _close(self) -> None:
        close = getattr(self._exporter, "close", None)
        if close is not None:
            close()
