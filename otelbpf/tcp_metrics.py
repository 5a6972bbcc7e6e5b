"""TCP metrics from spans' TCP facts: connect durations, retransmits and failed connects, by peer.

Per batch on the drain thread, like RequestMetrics: a span costs two dict lookups unless it carries a
connect time or retransmits, which few do. Attributes are kept few so series stay few: a client's peer
is its server (``server.address``/``server.port``), a server's peer only by address (``client.address``:
the client's port is ephemeral), and a failure's kind (``error.type``). Bounded by ``max_series`` attribute
sets per (resource, metric), the rest going to the overflow series, and ``max_groups`` (resource, metric)
pairs, beyond which facts are counted as unmeasured.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from otelbpf.metrics import COUNTER, HISTOGRAM, OVERFLOW, Attrs, Histogram, Instrument, Stream, bounds_ns
from otelbpf.spans import Resource, Span, SpanKind
from otelbpf.tcp_facts import CONNECT_US, RETRANSMITS

# Loopback connects take tens of µs, a lost SYN a second or more.
CONNECT_BOUNDS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

CONNECT_DURATION = Instrument(
    "otelbpf.tcp.connect.duration",
    "s",
    "Duration of TCP connects made by traced processes, from connect() to established or failed.",
    HISTOGRAM,
    CONNECT_BOUNDS_S,
)
RETRANSMITS_COUNT = Instrument(
    "otelbpf.tcp.retransmits", "{segment}", "TCP segments retransmitted during traced requests.", COUNTER
)
CONNECT_FAILURES = Instrument(
    "otelbpf.tcp.connect.failures", "{connect}", "TCP connects of traced processes that failed, by kind.", COUNTER
)


def peer(span: Span) -> Attrs:
    """The low-cardinality peer attributes of a span's connection."""
    attrs = span.all_attributes()
    address = attrs.get("network.peer.address")
    if address is None:
        return ()
    if span.kind == SpanKind.SERVER:
        return (("client.address", address),)
    return (("server.address", address), ("server.port", attrs.get("network.peer.port", 0)))


class TcpMetrics:
    """Aggregates spans' TCP facts into the connect-duration histogram and the two counters."""

    def __init__(
        self,
        delta: bool = False,
        max_series: int = 2000,
        max_groups: int = 4096,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self._delta = delta
        self._max_series = max_series
        self._max_groups = max_groups
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._points: dict[tuple[Resource, Instrument], dict[Attrs, Histogram | int]] = {}
        self._bounds = bounds_ns(CONNECT_DURATION)
        self._start_ns = clock_ns()
        self.overflowed = 0  # facts counted in an overflow series
        self.unmeasured = 0  # facts of a (resource, metric) beyond max_groups

    def record(self, spans: Sequence[Span]) -> None:
        """Count a batch of finished spans' TCP facts."""
        with self._lock:
            for s in spans:
                own = s.attributes
                retransmits = own.get(RETRANSMITS)
                connect_us = own.get(CONNECT_US)
                if not retransmits and connect_us is None:
                    continue
                where = peer(s)
                if retransmits:
                    self._add(s.resource, RETRANSMITS_COUNT, where, int(retransmits))  # type: ignore[arg-type]
                if connect_us is None:
                    continue
                failed = s.name == "connect" and "error.type" in own
                attrs = tuple(sorted((*where, ("error.type", own["error.type"])) if failed else where))
                h = self._series(s.resource, CONNECT_DURATION, attrs)
                if isinstance(h, Histogram):
                    h.record(int(connect_us) * 1000)  # type: ignore[call-overload]
                if failed:
                    self._add(s.resource, CONNECT_FAILURES, attrs, 1)

    def _series(self, resource: Resource, instrument: Instrument, attrs: Attrs) -> Histogram | int | None:
        """The point of one attribute set, made on first use; None when no group is left for it."""
        group = self._points.get((resource, instrument))
        if group is None:
            if len(self._points) >= self._max_groups:
                self.unmeasured += 1
                return None
            group = self._points[(resource, instrument)] = {}
        if attrs not in group and len(group) >= self._max_series:
            self.overflowed += 1
            attrs = OVERFLOW
        if attrs not in group:
            group[attrs] = Histogram(self._bounds) if instrument.kind == HISTOGRAM else 0
        return group[attrs]

    def _add(self, resource: Resource, instrument: Instrument, attrs: Attrs, n: int) -> None:
        if self._series(resource, instrument, attrs) is None:
            return
        group = self._points[(resource, instrument)]
        key = attrs if attrs in group else OVERFLOW
        group[key] = int(group[key]) + n  # type: ignore[call-overload]

    def notes(self) -> dict[str, int]:
        """The summary's lines: TCP facts not measured exactly."""
        return {
            "TCP facts counted in an overflow metric series (too many peers)": self.overflowed,
            "TCP facts not measured (too many resources with metrics)": self.unmeasured,
        }

    def collect(self) -> list[Stream]:
        """Every series as of now: since the last collection (delta) or since the start (cumulative)."""
        now = self._clock_ns()
        with self._lock:
            start, points = self._start_ns, self._points
            if self._delta:
                self._points, self._start_ns = {}, now
                return [Stream(r, i, dict(p), start, now, True) for (r, i), p in points.items()]
            out = []
            for (resource, instrument), series in points.items():
                copies = {a: v.copy() if isinstance(v, Histogram) else v for a, v in series.items()}
                out.append(Stream(resource, instrument, copies, start, now, False))
            return out
