"""RED metrics from spans: request-duration histograms of the HTTP and database semantic conventions.

``RequestMetrics.record`` runs on the drain thread once per batch of spans. Spans of one connection and
request head share an ``AttributeBlock``, so the metric series a span belongs to is a function of that
block, its resource and its own outcome (status code, error type): one tuple and one dict lookup find
it, and the bucket is one bisect over integer nanosecond bounds. The attribute set is worked out only
on a miss. No OpenTelemetry SDK call is made per span; ``otlp_metrics`` reads the aggregates on its
own thread and encodes them.

Bounded: each (resource, metric) keeps at most ``max_series`` attribute sets, the rest go to the
conventions' overflow series (``otel.metric.overflow=true``); at most ``max_groups`` (resource, metric)
pairs exist, spans beyond are counted, not measured; with cumulative temporality a pair that saw no
span for ``max_idle`` collections is dropped (its process is usually gone).
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from otelbpf.spans import AttributeValue, Resource, Span, SpanKind

Attrs = tuple[tuple[str, AttributeValue], ...]

HISTOGRAM = "histogram"
COUNTER = "counter"  # monotonic sum
GAUGE = "gauge"

# The conventions' advised ExplicitBucketBoundaries, in seconds.
HTTP_BOUNDS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
DB_BOUNDS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)

OVERFLOW: Attrs = (("otel.metric.overflow", True),)
_MISS = object()  # the fast cache's "not there" (None there means: no metric takes this span)


@dataclass(frozen=True)
class Instrument:
    """One metric's identity: name, unit (UCUM), description, kind and, for histograms, bucket bounds."""

    name: str
    unit: str
    description: str
    kind: str
    bounds_s: tuple[float, ...] = ()


HTTP_SERVER_DURATION = Instrument(
    "http.server.request.duration", "s", "Duration of HTTP server requests.", HISTOGRAM, HTTP_BOUNDS_S
)
HTTP_CLIENT_DURATION = Instrument(
    "http.client.request.duration", "s", "Duration of HTTP client requests.", HISTOGRAM, HTTP_BOUNDS_S
)
DB_CLIENT_DURATION = Instrument(
    "db.client.operation.duration", "s", "Duration of database client operations.", HISTOGRAM, DB_BOUNDS_S
)

# The conventions' attributes for each metric, minus the high-cardinality and opt-in ones. On the server
# metric server.address/port are opt-in (they come from the client's Host header); url.scheme is opt-in on
# the client one. network.protocol.name is only wanted when it is not "http", which it always is here.
HTTP_SERVER_KEYS = (
    "http.request.method",
    "http.response.status_code",
    "error.type",
    "url.scheme",
    "network.protocol.version",
)
HTTP_CLIENT_KEYS = (
    "http.request.method",
    "http.response.status_code",
    "error.type",
    "server.address",
    "server.port",
    "network.protocol.version",
)
DB_KEYS = (
    "db.system.name",
    "db.namespace",
    "db.operation.name",
    "db.collection.name",
    "db.query.summary",
    "db.response.status_code",
    "error.type",
    "server.address",
    "server.port",
)
# A span's own attributes that can tell two spans of one shared block apart in a metric: its outcome.
_STATUS = "http.response.status_code"
_ERROR = "error.type"
# Spans without a shared block (database calls): every key any metric reads from a span's own attributes.
_OWN_KEYS = tuple(dict.fromkeys(HTTP_CLIENT_KEYS + HTTP_SERVER_KEYS + DB_KEYS))


def bounds_ns(instrument: Instrument) -> list[int]:
    """A histogram's bucket bounds in integer nanoseconds, for bisecting span durations."""
    return [round(b * 1e9) for b in instrument.bounds_s]


class Histogram:
    """One attribute set's explicit-bucket histogram of durations, in nanoseconds.

    ``counts[i]`` counts durations in (bounds[i-1], bounds[i]] (OTLP's upper-inclusive buckets), the last
    one those above every bound.
    """

    __slots__ = ("bounds", "counts", "total", "min", "max")

    def __init__(self, bounds: list[int]) -> None:
        self.bounds = bounds  # shared by every histogram of the metric
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0
        self.min = -1  # -1: nothing recorded yet (durations are never negative)
        self.max = -1

    @property
    def count(self) -> int:
        """Durations recorded."""
        return sum(self.counts)

    def record(self, duration_ns: int) -> None:
        """Add one duration (the batch loop in RequestMetrics inlines this)."""
        d = duration_ns if duration_ns > 0 else 0
        self.counts[bisect_left(self.bounds, d)] += 1
        self.total += d
        if d < self.min or self.min < 0:
            self.min = d
        if d > self.max:
            self.max = d

    def merge(self, other: Histogram) -> None:
        """Add another histogram of the same bounds into this one."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.total += other.total
        if other.min >= 0 and (self.min < 0 or other.min < self.min):
            self.min = other.min
        self.max = max(self.max, other.max)

    def copy(self) -> Histogram:
        """An independent snapshot."""
        h = Histogram(self.bounds)
        h.counts = list(self.counts)
        h.total, h.min, h.max = self.total, self.min, self.max
        return h


Value = Histogram | int | float


@dataclass
class Stream:
    """One metric's points for one resource over [start_ns, time_ns], as read for one export."""

    resource: Resource
    instrument: Instrument
    points: dict[Attrs, Value]
    start_ns: int
    time_ns: int
    delta: bool  # aggregation temporality of a counter or histogram (gauges ignore it)


@dataclass
class RequestMetricsStats:
    """What the aggregation could not measure exactly (reported in the summary)."""

    overflowed: int = 0  # spans counted in an overflow series (too many attribute sets)
    unmeasured: int = 0  # spans of a (resource, metric) beyond max_groups
    groups_dropped: int = 0  # idle (resource, metric) pairs dropped under cumulative temporality


class _Group:
    """The series of one (resource, metric)."""

    __slots__ = ("resource", "instrument", "bounds", "series", "idle", "last_count")

    def __init__(self, resource: Resource, instrument: Instrument) -> None:
        self.resource = resource
        self.instrument = instrument
        self.bounds = bounds_ns(instrument)
        self.series: dict[Attrs, Histogram] = {}
        self.idle = 0  # collections in a row that found no new span
        self.last_count = 0


class SpanMetrics(Protocol):
    """Other metrics made from the same spans, recorded and collected along with the request durations."""

    def record(self, spans: Sequence[Span]) -> None: ...

    def collect(self) -> list[Stream]: ...

    def notes(self) -> dict[str, int]: ...


class RequestMetrics:
    """Aggregates spans into the request-duration histograms, per resource and attribute set."""

    def __init__(
        self,
        delta: bool = False,
        max_series: int = 2000,
        max_groups: int = 4096,
        max_idle: int = 30,
        cache_size: int = 8192,
        clock_ns: Callable[[], int] = time.time_ns,
        also: Sequence[SpanMetrics] = (),
    ) -> None:
        self._delta = delta
        self._also = tuple(also)  # more metrics from the same spans (TcpMetrics), recorded and collected along
        self._max_series = max_series
        self._max_groups = max_groups
        self._max_idle = max_idle
        self._cache_size = cache_size
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._groups: dict[tuple[Resource, Instrument], _Group] = {}
        # (shared block or own outcome, resource id, ...) -> the histogram, or None for a span no metric takes.
        # Keys hold the resource by id; the histogram's group holds the resource itself, so the id cannot be
        # reused while the entry lives.
        self._fast: dict[tuple[object, ...], Histogram | None] = {}
        self._start_ns = clock_ns()
        self.stats = RequestMetricsStats()

    def also_notes(self) -> dict[str, int]:
        """The summary lines of the metrics made along (what they could not measure exactly)."""
        return {k: v for more in self._also for k, v in more.notes().items()}

    def record(self, spans: Sequence[Span]) -> None:
        """Count a batch of finished spans into their histograms."""
        if not spans:
            return
        for more in self._also:
            more.record(spans)
        with self._lock:
            get = self._fast.get
            miss = _MISS
            for s in spans:
                own = s.attributes
                shared = s.shared
                if shared is not None:
                    key: tuple[object, ...] = (
                        shared, id(s.resource), s.name, s.kind, own.get(_STATUS), own.get(_ERROR)
                    )  # fmt: skip
                else:
                    key = (id(s.resource), s.name, s.kind, *map(own.get, _OWN_KEYS))
                h = get(key, miss)
                if h is miss:
                    h = self._resolve(s, key)
                if h is None:
                    continue
                d = s.end_ns - s.start_ns
                if d < 0:
                    d = 0
                h.counts[bisect_left(h.bounds, d)] += 1
                h.total += d
                if d > h.max:
                    h.max = d
                if d < h.min or h.min < 0:
                    h.min = d

    def _resolve(self, span: Span, key: tuple[object, ...]) -> Histogram | None:
        """The histogram for a span not in the fast cache; cache it."""
        described = describe(span)
        h = None
        if described is not None:
            instrument, attrs = described
            gkey = (span.resource, instrument)
            group = self._groups.get(gkey)
            if group is None and len(self._groups) < self._max_groups:
                group = self._groups[gkey] = _Group(span.resource, instrument)
            if group is None:
                self.stats.unmeasured += 1
                return None  # not cached: a slot may free up at the next collection
            h = group.series.get(attrs)
            if h is None:
                if len(group.series) >= self._max_series:
                    attrs = OVERFLOW
                    h = group.series.get(attrs)
                if h is None:
                    h = group.series[attrs] = Histogram(group.bounds)
            if attrs is OVERFLOW:
                self.stats.overflowed += 1
                return h  # not cached, so each overflowing span is counted
        if len(self._fast) >= self._cache_size:
            self._fast.clear()  # bounded; refilled by the spans that repeat
        self._fast[key] = h
        return h

    def collect(self) -> list[Stream]:
        """Every histogram as of now: since the last collection (delta) or since the start (cumulative)."""
        also = [stream for more in self._also for stream in more.collect()]
        return self._collect() + also

    def _collect(self) -> list[Stream]:
        now = self._clock_ns()
        with self._lock:
            start, groups = self._start_ns, self._groups
            if self._delta:
                # Start afresh: the next interval's spans go to new histograms.
                self._groups, self._fast = {}, {}
                self._start_ns = now
                return [Stream(g.resource, g.instrument, dict(g.series), start, now, True) for g in groups.values()]
            out = []
            idle = []
            for gkey, g in groups.items():
                copies = {attrs: h.copy() for attrs, h in g.series.items()}
                out.append(Stream(g.resource, g.instrument, copies, start, now, False))
                count = sum(h.count for h in g.series.values())
                g.idle = g.idle + 1 if count == g.last_count else 0
                g.last_count = count
                if g.idle >= self._max_idle:
                    idle.append(gkey)
            if idle:
                for gkey in idle:
                    del groups[gkey]
                self.stats.groups_dropped += len(idle)
                self._fast = {}  # it may point into the dropped groups
            return out


def describe(span: Span) -> tuple[Instrument, Attrs] | None:
    """Which request-duration metric a span counts in, with the attribute set it counts under; None: none."""
    attrs = span.all_attributes()
    kind = span.kind
    if "http.request.method" in attrs:
        if kind == SpanKind.SERVER:
            items = [(k, attrs[k]) for k in HTTP_SERVER_KEYS if k in attrs]
            # The span name is "METHOD route", the route guessed from the path with ids collapsed.
            route = span.name.partition(" ")[2]
            if route:
                items.append(("http.route", route))
            return HTTP_SERVER_DURATION, tuple(sorted(items))
        if kind == SpanKind.CLIENT:
            return HTTP_CLIENT_DURATION, tuple(sorted((k, attrs[k]) for k in HTTP_CLIENT_KEYS if k in attrs))
        return None
    if "db.system.name" in attrs and kind == SpanKind.CLIENT:
        return DB_CLIENT_DURATION, tuple(sorted((k, attrs[k]) for k in DB_KEYS if k in attrs))
    return None


@dataclass
class Pending:
    """Data that failed to export, merged into the next export; bounded by ``max_points``."""

    streams: dict[tuple[Resource, Instrument], Stream] = field(default_factory=dict)
    points: int = 0

    def merge(self, new: Sequence[Stream], max_points: int) -> int:
        """Fold new streams in (delta: added; cumulative and gauges: replaced); return the points dropped."""
        dropped = 0
        for st in new:
            key = (st.resource, st.instrument)
            old = self.streams.get(key)
            if old is None or not (st.delta and old.delta) or st.instrument.kind == GAUGE:
                if old is not None:
                    self.points -= len(old.points)
                self.streams[key] = Stream(
                    st.resource, st.instrument, dict(st.points), st.start_ns, st.time_ns, st.delta
                )  # fmt: skip
                self.points += len(st.points)
                continue
            before = len(old.points)
            for attrs, value in st.points.items():
                mine = old.points.get(attrs)
                if mine is None:
                    old.points[attrs] = value.copy() if isinstance(value, Histogram) else value
                elif isinstance(mine, Histogram):
                    mine.merge(value)  # type: ignore[arg-type]
                else:
                    old.points[attrs] = mine + value  # type: ignore[operator]
            old.start_ns = min(old.start_ns, st.start_ns)
            old.time_ns = max(old.time_ns, st.time_ns)
            self.points += len(old.points) - before
        if self.points > max_points:
            # A long outage: keep only what the newest collection touched, and say how much older data went.
            kept = {(st.resource, st.instrument) for st in new}
            for key in list(self.streams):
                if key not in kept:
                    dropped += len(self.streams.pop(key).points)
            self.points = sum(len(st.points) for st in self.streams.values())
        return dropped

    def take(self) -> list[Stream]:
        """Everything pending, leaving nothing."""
        streams, self.streams, self.points = list(self.streams.values()), {}, 0
        return streams
