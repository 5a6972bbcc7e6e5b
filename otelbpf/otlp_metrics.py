"""OTLP metrics export: settings, encoding to ExportMetricsServiceRequest, and the periodic export thread.

Metrics are few per interval (one point per attribute set, not per span), so they are built with the
generated protobuf classes. The thread is the metrics' own, apart from the drain thread and the span
export thread. A failed export is not lost: its data is merged into the next one (cumulative data is
replaced by the newer totals, delta data is added up, bounded by ``max_pending_points``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource as PbResource

from otelbpf.collector import Health
from otelbpf.export import (
    METRICS,
    SCOPE_NAME,
    Exporter,
    ExportError,
    OtlpSettings,
    create_exporter,
    key_values,
    positive_number,
    resolve_otlp_settings,
)
from otelbpf.metrics import COUNTER, GAUGE, HISTOGRAM, Histogram, Pending, RequestMetrics, Stream
from otelbpf.self_metrics import Reading, SelfMetrics, own_resource
from otelbpf.spans import Resource

logger = logging.getLogger(__name__)

TEMPORALITIES = ("cumulative", "delta", "lowmemory")
DEFAULT_INTERVAL_S = 60.0
_DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
_CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE


# --------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricsSettings:
    """Where, how often and with which temporality metrics are exported."""

    otlp: OtlpSettings
    interval_s: float = DEFAULT_INTERVAL_S
    temporality: str = "cumulative"

    @property
    def histograms_delta(self) -> bool:
        """Histograms (synchronous instruments) are delta under ``delta`` and ``lowmemory``."""
        return self.temporality in ("delta", "lowmemory")

    @property
    def counters_delta(self) -> bool:
        """Observable counters are delta under ``delta`` only (``lowmemory`` keeps them cumulative)."""
        return self.temporality == "delta"


def resolve_metrics_settings(
    endpoint_flag: str | None,
    protocol_flag: str | None,
    headers_flag: str | None,
    env: Mapping[str, str],
    *,
    enabled: bool = True,
    interval_s: float | None = None,
    temporality: str | None = None,
) -> MetricsSettings | None:
    """Resolve metric export from flags and OTEL_* env; None when off (--no-metrics, OTEL_METRICS_EXPORTER=none,
    or no endpoint: the terminal shows traces only)."""
    if not enabled or not _otlp_wanted(env.get("OTEL_METRICS_EXPORTER", "")):
        return None
    otlp = resolve_otlp_settings(endpoint_flag, protocol_flag, headers_flag, env, signal=METRICS)
    if otlp is None:
        return None
    if interval_s is None:
        raw = env.get("OTEL_METRIC_EXPORT_INTERVAL", "").strip()
        ms = positive_number("OTEL_METRIC_EXPORT_INTERVAL", raw, "milliseconds") if raw else None
        interval_s = ms / 1000.0 if ms is not None else DEFAULT_INTERVAL_S
    elif not interval_s > 0:
        raise ValueError(f"--metric-export-interval must be more than 0 seconds, got {interval_s:g}")
    name = "OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE"
    chosen = (temporality or env.get(name, "").strip() or "cumulative").lower()
    if chosen not in TEMPORALITIES:
        raise ValueError(f"{name}={chosen!r}: expected one of {', '.join(TEMPORALITIES)}")
    return MetricsSettings(otlp, interval_s, chosen)


def _otlp_wanted(value: str) -> bool:
    """Read OTEL_METRICS_EXPORTER: "otlp" (the default) or "none"; other exporters are not offered here."""
    names = [n.strip().lower() for n in value.split(",") if n.strip()] or ["otlp"]
    if "none" in names:
        return False
    others = [n for n in names if n != "otlp"]
    if others:
        logger.warning("OTEL_METRICS_EXPORTER: %s not supported (only otlp): ignored", ", ".join(others))
    return "otlp" in names


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def encode_request(streams: Sequence[Stream], scope_version: str) -> ExportMetricsServiceRequest:
    """One ResourceMetrics per resource, one scope each, one Metric per instrument."""
    by_resource: dict[Resource, list[Stream]] = {}
    for st in streams:
        if st.points:
            by_resource.setdefault(st.resource, []).append(st)
    request = ExportMetricsServiceRequest()
    scope = InstrumentationScope(name=SCOPE_NAME, version=scope_version)
    for resource, group in by_resource.items():
        rm = request.resource_metrics.add(resource=PbResource(attributes=key_values(resource.attributes)))
        metrics = rm.scope_metrics.add(scope=scope).metrics
        for st in group:
            inst = st.instrument
            m = metrics.add(name=inst.name, unit=inst.unit, description=inst.description)
            temporality = _DELTA if st.delta else _CUMULATIVE
            if inst.kind == HISTOGRAM:
                m.histogram.aggregation_temporality = temporality
                add = m.histogram.data_points.add
                for attrs, h in st.points.items():
                    assert isinstance(h, Histogram)
                    count = h.count
                    point = add(
                        attributes=key_values(attrs),
                        start_time_unix_nano=st.start_ns,
                        time_unix_nano=st.time_ns,
                        count=count,
                        sum=h.total / 1e9,
                        bucket_counts=h.counts,
                        explicit_bounds=inst.bounds_s,
                    )
                    if count:
                        point.min, point.max = h.min / 1e9, h.max / 1e9
            elif inst.kind == COUNTER:
                m.sum.aggregation_temporality = temporality
                m.sum.is_monotonic = True
                add = m.sum.data_points.add
                for attrs, v in st.points.items():
                    add(attributes=key_values(attrs), start_time_unix_nano=st.start_ns, time_unix_nano=st.time_ns,
                        as_int=int(v))  # type: ignore[arg-type]  # fmt: skip
            elif inst.kind == GAUGE:
                add = m.gauge.data_points.add
                for attrs, v in st.points.items():
                    if isinstance(v, int):
                        add(attributes=key_values(attrs), time_unix_nano=st.time_ns, as_int=v)
                    else:
                        add(attributes=key_values(attrs), time_unix_nano=st.time_ns, as_double=float(v))  # type: ignore[arg-type]
    return request


def point_count(streams: Sequence[Stream]) -> int:
    """Data points in a set of streams."""
    return sum(len(st.points) for st in streams)


# --------------------------------------------------------------------------------------------------
# The export thread
# --------------------------------------------------------------------------------------------------

Source = Callable[[bool], list[Stream]]  # collect(final) -> streams


@dataclass
class MetricsExportStats:
    """How metric export went (for the summary and otelbpf's own metrics)."""

    exports: int = 0
    failures: int = 0
    points_dropped: int = 0  # unsent data given up: a permanent error, or too much held over an outage
    last_error: str = ""


class MetricsExporter:
    """Collects every source each interval and exports the lot, on a thread of its own."""

    def __init__(
        self,
        exporter: Exporter,
        interval_s: float = DEFAULT_INTERVAL_S,
        scope_version: str = "0.1.0",
        max_pending_points: int = 50_000,
    ) -> None:
        self._exporter = exporter
        self._interval_s = interval_s
        self._scope_version = scope_version
        self._max_pending = max_pending_points
        self._sources: list[Source] = []
        self._notes: list[Callable[[], dict[str, int]]] = []
        self._pending = Pending()
        self._cycle = threading.Lock()  # one collect-and-export at a time (the exporter is not thread-safe)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stats = MetricsExportStats()

    def add_source(self, source: Source) -> None:
        """Collect this too (before start)."""
        self._sources.append(source)

    def add_notes(self, notes: Callable[[], dict[str, int]]) -> None:
        """Add these lines to the summary's."""
        self._notes.append(notes)

    def start(self) -> None:
        """Start exporting every interval."""
        self._thread = threading.Thread(target=self._run, name="otelbpf-metrics", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.export_once()
            except Exception:  # a bug must cost one export, not every later one
                logger.exception("metric export raised unexpectedly")

    def export_once(self, final: bool = False) -> bool:
        """Collect and export now; True if the backend took everything pending."""
        with self._cycle:
            return self._export_locked(final)

    def _export_locked(self, final: bool) -> bool:
        streams: list[Stream] = []
        for source in self._sources:
            try:
                streams += source(final)
            except Exception:
                logger.exception("collecting metrics failed")
        self.stats.points_dropped += self._pending.merge(streams, self._max_pending)
        batch = list(self._pending.streams.values())
        points = point_count(batch)
        if not points:
            return True
        try:
            payload = encode_request(batch, self._scope_version).SerializeToString()
            self._exporter.export(payload, points)
        except ExportError as e:
            err = e
        except Exception as e:  # an exporter or encoding bug: permanent
            err = ExportError(False, f"{type(e).__name__}: {e}")
        else:
            self._pending.take()
            self.stats.exports += 1
            return True
        self.stats.failures += 1
        self.stats.last_error = err.message
        if not err.retryable:
            self.stats.points_dropped += point_count(self._pending.take())
            logger.warning("metric export failed, %d points dropped: %s", points, err.message)
        else:
            logger.warning("metric export failed, sent with the next export: %s", err.message)
        return False

    def shutdown(self, timeout_s: float = 10.0) -> None:
        """Stop the thread, then export once more (the last spans' metrics), within ``timeout_s``."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout_s
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
        # An export still hanging on a dead backend holds the lock: then there is no last export.
        if self._cycle.acquire(timeout=max(0.0, deadline - time.monotonic())):
            try:
                self._export_locked(final=True)
            finally:
                self._cycle.release()
        else:
            self.stats.failures += 1
            self.stats.points_dropped += self._pending.points
            logger.warning("metric export still running at the shutdown deadline: the last metrics are not sent")
        self._close_exporter()

    def stop(self) -> None:
        """Stop without a last export (on an error path)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        self._close_exporter()

    def _close_exporter(self) -> None:
        close = getattr(self._exporter, "close", None)
        if close is not None:
            close()

    def notes(self) -> dict[str, int]:
        """The summary's lines about metric export."""
        notes = {
            "metric exports failed": self.stats.failures,
            "metric points dropped (export failed for good, or held too long)": self.stats.points_dropped,
        }
        for more in self._notes:
            notes |= more()
        return notes


def start_metrics(
    settings: MetricsSettings,
    requests: RequestMetrics,
    health: Callable[[bool], Health],
    rate_limit: Callable[[], int],
    env: Mapping[str, str],
    scope_version: str,
) -> MetricsExporter:
    """Export the request metrics and otelbpf's own every interval from now on, on their own thread."""
    exporter = MetricsExporter(create_exporter(settings.otlp), settings.interval_s, scope_version)

    def read(final: bool) -> Reading:
        return Reading(health(final), rate_limit(), exporter.stats.failures)

    own = SelfMetrics(read, own_resource(env), delta=settings.counters_delta)
    exporter.add_source(lambda final: requests.collect())
    exporter.add_source(own.collect)
    exporter.add_notes(
        lambda: {
            "spans counted in an overflow metric series (too many attribute sets)": requests.stats.overflowed,
            "spans not measured (too many resources with metrics)": requests.stats.unmeasured,
        }
        | requests.also_notes()
    )
    exporter.start()
    return exporter
