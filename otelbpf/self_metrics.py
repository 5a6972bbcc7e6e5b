"""otelbpf's own counters as metrics, on otelbpf's own resource: what it saw, exported and lost, and why.

A long-running daemon must show its loss while it runs, not only in the summary at exit. The counters
are the summary's (``collector.Health``), read on the metrics thread once per export interval and
reported as observable counters and gauges.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from otelbpf import __version__
from otelbpf.collector import Health
from otelbpf.metrics import COUNTER, GAUGE, Attrs, Instrument, Stream
from otelbpf.resources import host_name, parse_resource_attributes
from otelbpf.spans import AttributeValue, Resource

REQUESTS_SEEN = Instrument("otelbpf.requests.seen", "{request}", "Requests the kernel saw start.", COUNTER)
SPANS_BUILT = Instrument("otelbpf.spans.built", "{span}", "Spans built from kernel records.", COUNTER)
SPANS_EXPORTED = Instrument("otelbpf.spans.exported", "{span}", "Spans the backend accepted.", COUNTER)
SPANS_LOST = Instrument(
    "otelbpf.spans.lost", "{span}", "Requests or spans lost before export, by otelbpf.loss.reason.", COUNTER
)
REQUESTS_UNFINISHED = Instrument(
    "otelbpf.requests.unfinished", "{request}", "Requests neither finished nor lost: in flight, or evicted.", GAUGE
)
QUEUE_SIZE = Instrument("otelbpf.export.queue.size", "{span}", "Spans waiting in the export queue.", GAUGE)
RING_RECORDS = Instrument("otelbpf.ringbuf.records", "{record}", "Records taken from the kernel ring buffer.", COUNTER)
RING_BYTES = Instrument("otelbpf.ringbuf.bytes", "By", "Bytes of records taken from the kernel ring buffer.", COUNTER)
RATE_LIMIT = Instrument(
    "otelbpf.rate_limit", "{request}/s", "Requests traced per second at most, now (0: no limit).", GAUGE
)
METRIC_EXPORT_FAILURES = Instrument(
    "otelbpf.metrics.export.failures", "{export}", "Metric exports that failed (their data is sent later).", COUNTER
)

# collector LOSS_REASONS key -> the otelbpf.loss.reason value.
LOSS_REASON_VALUES = {
    "lost_ringbuf_full": "ringbuf_full",
    "sampled_out": "sampled_out",
    "queue_full": "queue_full",
    "export_failed": "export_failed",
    "shutdown": "shutdown",
    "malformed": "malformed",
    "evicted": "evicted",
}


def own_resource(env: Mapping[str, str]) -> Resource:
    """otelbpf's own resource: service.name ``otelbpf`` whatever OTEL_SERVICE_NAME says (that names the
    traced services), plus OTEL_RESOURCE_ATTRIBUTES (deployment.environment and such)."""
    attrs: dict[str, AttributeValue] = dict(parse_resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    attrs |= {
        "service.name": "otelbpf",
        "service.version": __version__,
        "host.name": host_name(env),  # as on the traced processes' resources, so the two line up
        "process.pid": os.getpid(),
        "telemetry.sdk.name": "otelbpf",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.version": __version__,
    }
    return Resource(tuple(sorted(attrs.items())))


@dataclass
class Reading:
    """One look at otelbpf's own state."""

    health: Health
    rate_limit: int
    metric_export_failures: int


class SelfMetrics:
    """Turns readings of otelbpf's counters into streams, as deltas or totals as the temporality asks."""

    def __init__(
        self,
        read: Callable[[bool], Reading],
        resource: Resource,
        delta: bool = False,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._read = read
        self.resource = resource
        self._delta = delta
        self._clock_ns = clock_ns
        self._start_ns = clock_ns()
        self._last: dict[tuple[Instrument, Attrs], int] = {}
        self._lock = threading.Lock()

    def collect(self, final: bool = False) -> list[Stream]:
        """Read the counters now (``final``: at exit, with the in-flight requests counted)."""
        reading = self._read(final)
        now = self._clock_ns()
        with self._lock:
            start = self._start_ns
            streams = []
            for instrument, points in counter_points(reading).items():
                if self._delta:
                    last = self._last
                    deltas = {}
                    for attrs, total in points.items():
                        deltas[attrs] = total - last.get((instrument, attrs), 0)
                        last[(instrument, attrs)] = total
                    points = deltas
                streams.append(Stream(self.resource, instrument, points, start, now, self._delta))
            for instrument, value in gauge_points(reading).items():
                streams.append(Stream(self.resource, instrument, {(): value}, now, now, False))
            if self._delta:
                self._start_ns = now
            return streams


def counter_points(reading: Reading) -> dict[Instrument, dict[Attrs, int]]:
    """The monotonic totals, by instrument and attribute set."""
    h = reading.health
    lost = {(("otelbpf.loss.reason", LOSS_REASON_VALUES[k]),): n for k, n in h.lost.items()}
    return {
        REQUESTS_SEEN: {(): h.requests_seen},
        SPANS_BUILT: {(): h.spans_built},
        SPANS_EXPORTED: {(): h.spans_exported},
        SPANS_LOST: lost,
        RING_RECORDS: {(): h.records},
        RING_BYTES: {(): h.record_bytes},
        METRIC_EXPORT_FAILURES: {(): reading.metric_export_failures},
    }


def gauge_points(reading: Reading) -> dict[Instrument, int]:
    """The values that go up and down."""
    h = reading.health
    return {REQUESTS_UNFINISHED: h.unfinished, QUEUE_SIZE: h.queued, RATE_LIMIT: reading.rate_limit}
