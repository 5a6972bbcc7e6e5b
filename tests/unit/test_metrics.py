"""Request-duration metrics: spans in, exact histograms out (buckets, counts, sums, attribute sets, temporality)."""

from __future__ import annotations

import os
import struct

import pytest

from otelbpf import events
from otelbpf.cli import parse_args
from otelbpf.clock import ClockMap
from otelbpf.correlate import IdGenerator, SpanBuilder
from otelbpf.export import ExportStats
from otelbpf.metrics import (
    DB_BOUNDS_S,
    DB_CLIENT_DURATION,
    HTTP_BOUNDS_S,
    HTTP_CLIENT_DURATION,
    HTTP_SERVER_DURATION,
    OVERFLOW,
    Histogram,
    Pending,
    RequestMetrics,
    Stream,
    bounds_ns,
    describe,
)
from otelbpf.resources import ResourceCache
from otelbpf.runner import pipeline
from otelbpf.spans import Resource, Span, SpanKind
from tests.factories import http_event, record_bytes, v4

RES_A = Resource((("service.name", "a"),))
RES_B = Resource((("service.name", "b"),))
MS = 1_000_000


class Clock:
    """A settable nanosecond clock."""

    def __init__(self, now: int = 1_000) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


@pytest.fixture()
def builder() -> SpanBuilder:
    return SpanBuilder(ResourceCache(env={}), ClockMap(realtime_ns=lambda: 0, monotonic_ns=lambda: 0), IdGenerator(1))


def http(path: str = "/users/1", status: int = 200, duration_ns: int = 3 * MS, **kw: object) -> events.RequestEvent:
    """A server request from this process (so its resource is real), taking ``duration_ns``."""
    req = f"GET {path} HTTP/1.1\r\nHost: shop.local:8080\r\n\r\n".encode()
    fields: dict[str, object] = dict(req=req, status=status, pid=os.getpid(), start_ns=1_000)
    fields["end_ns"] = 1_000 + duration_ns
    fields.update(kw)
    return http_event(**fields)


def pg(sql: str, duration_ns: int = 2 * MS, resp: bytes | None = None) -> events.RequestEvent:
    body = sql.encode() + b"\0"
    ready = b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I"
    return http_event(
        protocol=events.PROTO_POSTGRES, role=events.ROLE_CLIENT, local_addr=v4("127.0.0.1"), peer_addr=v4("127.0.0.1"),
        local_port=40000, peer_port=5432, status=0, req=b"Q" + struct.pack(">I", 4 + len(body)) + body,
        resp=ready if resp is None else resp, pid=os.getpid(), start_ns=1_000, end_ns=1_000 + duration_ns,
    )  # fmt: skip


def points(streams: list[Stream], instrument=HTTP_SERVER_DURATION) -> dict:
    """attrs dict (as a frozenset of items) -> histogram, over every stream of one instrument."""
    out = {}
    for st in streams:
        if st.instrument == instrument:
            for attrs, h in st.points.items():
                out[frozenset(attrs)] = h
    return out


def test_bucket_bounds_are_the_conventions_and_upper_inclusive() -> None:
    assert HTTP_BOUNDS_S == (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
    assert DB_BOUNDS_S == (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10)
    h = Histogram(bounds_ns(HTTP_SERVER_DURATION))
    for d in (0, 5 * MS, 5 * MS + 1, 10 * MS, 10_000 * MS, 10_000 * MS + 1, -7):
        h.record(d)
    # (-inf, 5ms] holds 0, 5ms and the negative duration (clamped); (5, 10] holds 5ms+1 and 10ms;
    # (7.5 s, 10 s] holds 10 s; above every bound: 10 s + 1 ns.
    assert h.counts == [3, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert (h.count, h.total, h.min, h.max) == (7, 20_000 * MS + 1 + 20 * MS + 1, 0, 10_000 * MS + 1)


def test_http_server_spans_become_exact_histograms(builder: SpanBuilder) -> None:
    clock = Clock()
    metrics = RequestMetrics(clock_ns=clock)
    durations = [1 * MS, 7 * MS, 30 * MS, 30 * MS, 2_000 * MS]
    spans = [builder.build(http(f"/users/{i}", duration_ns=d)) for i, d in enumerate(durations)]
    spans += [builder.build(http("/users/9", status=404, duration_ns=4 * MS))]
    spans += [builder.build(http("/boom", status=500, duration_ns=60 * MS)) for _ in range(3)]
    metrics.record(spans[:4])
    metrics.record(spans[4:])
    clock.now = 2_000
    streams = metrics.collect()
    got = points(streams)
    base = {("http.request.method", "GET"), ("url.scheme", "http"), ("network.protocol.version", "1.1")}
    ok = got[frozenset(base | {("http.response.status_code", 200), ("http.route", "/users/{id}")})]
    assert ok.count == 5 and ok.total == sum(durations)
    assert ok.counts == [1, 1, 0, 2, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert (ok.min, ok.max) == (1 * MS, 2_000 * MS)
    not_found = got[frozenset(base | {("http.response.status_code", 404), ("http.route", "/users/{id}")})]
    assert not_found.count == 1  # a 404 is no error on a server: no error.type
    failed = got[frozenset(base | {("http.response.status_code", 500), ("http.route", "/boom"), ("error.type", "500")})]
    assert failed.count == 3 and failed.total == 180 * MS
    assert len(got) == 3
    (st,) = streams
    assert (st.resource, st.start_ns, st.time_ns, st.delta) == (spans[0].resource, 1_000, 2_000, False)


def test_http_client_spans_carry_the_server_and_no_route(builder: SpanBuilder) -> None:
    metrics = RequestMetrics()
    spans = [builder.build(http(role=events.ROLE_CLIENT, duration_ns=12 * MS)) for _ in range(2)]
    metrics.record(spans)
    (attrs,) = points(metrics.collect(), HTTP_CLIENT_DURATION)
    assert dict(attrs) == {
        "http.request.method": "GET",
        "http.response.status_code": 200,
        "server.address": "shop.local",
        "server.port": 8080,
        "network.protocol.version": "1.1",
    }


def test_db_spans_carry_the_operation_and_the_error(builder: SpanBuilder) -> None:
    metrics = RequestMetrics()
    error = b"E\0\0\0\x1eSERROR\0C42P01\0Mno table\0\0Z\0\0\0\x05I"
    spans = [builder.build(pg("SELECT * FROM items WHERE id = 1", 3 * MS)) for _ in range(3)]
    spans.append(builder.build(pg("SELECT * FROM nope", 20 * MS, resp=error)))
    metrics.record(spans)
    got = points(metrics.collect(), DB_CLIENT_DURATION)
    base = {("db.system.name", "postgresql"), ("db.operation.name", "SELECT"), ("server.address", "127.0.0.1"),
            ("server.port", 5432)}  # fmt: skip
    ok = got[frozenset(base | {("db.collection.name", "items"), ("db.query.summary", "SELECT items")})]
    assert ok.count == 3 and ok.counts == [0, 3, 0, 0, 0, 0, 0, 0, 0, 0]
    bad = got[frozenset(base | {("db.collection.name", "nope"), ("db.query.summary", "SELECT nope"),
                                ("db.response.status_code", "42P01"), ("error.type", "42P01")})]  # fmt: skip
    assert bad.count == 1 and bad.counts[3] == 1
    assert len(got) == 2


def test_spans_group_by_resource() -> None:
    def span(resource: Resource) -> Span:
        return Span(b"t" * 16, b"s" * 8, "GET /x", SpanKind.SERVER, 0, 2 * MS, resource,
                    {"http.request.method": "GET", "http.response.status_code": 200})  # fmt: skip

    metrics = RequestMetrics()
    metrics.record([span(RES_A), span(RES_B), span(RES_A)])
    counts = {st.resource: sum(h.count for h in st.points.values()) for st in metrics.collect()}
    assert counts == {RES_A: 2, RES_B: 1}


def test_an_equal_resource_object_shares_the_series() -> None:
    # The fast cache keys on the resource's identity; an equal resource rebuilt must still land in one series.
    def span(resource: Resource) -> Span:
        return Span(b"t" * 16, b"s" * 8, "GET /x", SpanKind.SERVER, 0, MS, resource, {"http.request.method": "GET"})

    metrics = RequestMetrics()
    metrics.record([span(Resource((("service.name", "a"),))), span(Resource((("service.name", "a"),)))])
    (st,) = metrics.collect()
    assert [h.count for h in st.points.values()] == [2]


def test_spans_of_no_metric_are_skipped() -> None:
    other = Span(b"t" * 16, b"s" * 8, "redis", SpanKind.INTERNAL, 0, MS, RES_A, {"x": 1})
    metrics = RequestMetrics()
    metrics.record([other, other])
    assert metrics.collect() == []
    assert describe(other) is None


def test_cumulative_keeps_counting_and_delta_starts_afresh(builder: SpanBuilder) -> None:
    for delta in (False, True):
        clock = Clock(100)
        metrics = RequestMetrics(delta=delta, clock_ns=clock)
        metrics.record([builder.build(http()) for _ in range(3)])
        clock.now = 200
        (first,) = metrics.collect()
        metrics.record([builder.build(http()) for _ in range(2)])
        clock.now = 300
        (second,) = metrics.collect()
        clock.now = 400
        third = metrics.collect()
        [h1], [h2] = first.points.values(), second.points.values()
        assert (first.start_ns, first.time_ns, h1.count) == (100, 200, 3)
        if delta:
            assert (second.start_ns, second.time_ns, h2.count, second.delta) == (200, 300, 2, True)
            assert third == []  # nothing new: nothing to say
        else:
            assert (second.start_ns, second.time_ns, h2.count, second.delta) == (100, 300, 5, False)
            assert h1.count == 3  # a snapshot, not the live histogram
            assert [sum(h.count for h in st.points.values()) for st in third] == [5]


def test_attribute_sets_beyond_the_limit_overflow() -> None:
    metrics = RequestMetrics(max_series=3)
    spans = [
        Span(b"t" * 16, b"s" * 8, f"GET /p{i}", SpanKind.SERVER, 0, MS, RES_A, {"http.request.method": "GET"})
        for i in range(5)
    ]
    metrics.record(spans + spans[:1])
    (st,) = metrics.collect()
    assert len(st.points) == 4 and st.points[OVERFLOW].count == 2
    assert sum(h.count for h in st.points.values()) == 6
    assert metrics.stats.overflowed == 2


def test_resources_beyond_the_limit_are_counted_not_measured() -> None:
    metrics = RequestMetrics(max_groups=1)
    span_b = Span(b"t" * 16, b"s" * 8, "GET /", SpanKind.SERVER, 0, MS, RES_B, {"http.request.method": "GET"})
    span_a = Span(b"t" * 16, b"s" * 8, "GET /", SpanKind.SERVER, 0, MS, RES_A, {"http.request.method": "GET"})
    metrics.record([span_a, span_b, span_b])
    assert [st.resource for st in metrics.collect()] == [RES_A]
    assert metrics.stats.unmeasured == 2


def test_idle_resources_are_dropped_under_cumulative() -> None:
    metrics = RequestMetrics(max_idle=2)
    span = Span(b"t" * 16, b"s" * 8, "GET /", SpanKind.SERVER, 0, MS, RES_A, {"http.request.method": "GET"})
    metrics.record([span])
    assert len(metrics.collect()) == 1  # new data
    assert len(metrics.collect()) == 1  # idle once
    assert len(metrics.collect()) == 1  # idle twice: reported a last time, then dropped
    assert metrics.collect() == [] and metrics.stats.groups_dropped == 1
    metrics.record([span])  # back: a new series, started afresh
    (st,) = metrics.collect()
    assert [h.count for h in st.points.values()] == [1]


def test_the_fast_cache_is_bounded(builder: SpanBuilder) -> None:
    metrics = RequestMetrics(cache_size=4)
    spans = [builder.build(http(f"/p{i}")) for i in range(10)]
    metrics.record(spans)
    assert len(metrics._fast) <= 4
    assert sum(h.count for st in metrics.collect() for h in st.points.values()) == 10


def stream(points: dict, start: int, end: int, delta: bool = True, resource: Resource = RES_A) -> Stream:
    return Stream(resource, HTTP_SERVER_DURATION, points, start, end, delta)


def hist(*durations: int) -> Histogram:
    h = Histogram(bounds_ns(HTTP_SERVER_DURATION))
    for d in durations:
        h.record(d)
    return h


def test_pending_adds_deltas_and_replaces_cumulative() -> None:
    attrs = (("http.request.method", "GET"),)
    pending = Pending()
    assert pending.merge([stream({attrs: hist(MS, 20 * MS)}, 0, 10)], 100) == 0
    assert pending.merge([stream({attrs: hist(3 * MS), (): hist(MS)}, 10, 20)], 100) == 0
    (merged,) = pending.streams.values()
    h = merged.points[attrs]
    assert (merged.start_ns, merged.time_ns, h.count, h.total, h.min, h.max) == (0, 20, 3, 24 * MS, MS, 20 * MS)
    assert pending.points == 2
    cumulative = Pending()
    cumulative.merge([stream({attrs: hist(MS)}, 0, 10, delta=False)], 100)
    cumulative.merge([stream({attrs: hist(MS, MS)}, 0, 20, delta=False)], 100)
    (latest,) = cumulative.streams.values()
    assert (latest.time_ns, latest.points[attrs].count) == (20, 2)


def test_pending_is_bounded() -> None:
    pending = Pending()
    pending.merge([stream({(("a", i),): hist(MS) for i in range(3)}, 0, 10, resource=RES_A)], 4)
    dropped = pending.merge([stream({(("a", i),): hist(MS) for i in range(3)}, 10, 20, resource=RES_B)], 4)
    assert dropped == 3 and [st.resource for st in pending.streams.values()] == [RES_B]
    assert pending.points == 3 and len(pending.take()) == 1 and pending.points == 0


class Ring:
    """A ring-buffer stand-in holding one batch of records."""

    def __init__(self, records: list[bytes]) -> None:
        self.records = records

    def drain(self, limit: int) -> list[bytes]:
        out, self.records = self.records, []
        return out

    def wait(self, timeout_s: float) -> None:
        pass


class Queue:
    """An export queue that keeps what it is given."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def submit(self, spans: list[Span]) -> int:
        self.spans += spans
        return len(spans)

    def submit_waiting(self, spans: list[Span], timeout_s: float = 10.0) -> int:
        return self.submit(spans)

    def stats(self) -> ExportStats:
        return ExportStats(exported=len(self.spans))


class Kernel:
    def read_stats(self) -> dict[str, int]:
        return {"requests": 23, "events": 23}

    def in_flight_requests(self) -> int:
        return 0


@pytest.mark.parametrize("link", [True, False])
def test_the_collector_counts_every_span_it_sends(link: bool) -> None:
    records = [record_bytes(http(f"/items/{i}", duration_ns=(i + 1) * MS)) for i in range(23)]
    metrics = RequestMetrics()
    queue = Queue()
    args = parse_args(["run", "--link-window", "0.5" if link else "0"], {})
    collector = pipeline(args, {}, Kernel(), Ring(records), queue, 1, metrics=metrics)  # type: ignore[arg-type]
    collector.process_once()
    collector.release_linked(flush=True)
    (st,) = metrics.collect()
    (h,) = st.points.values()
    assert h.count == len(queue.spans) == 23 and h.total == sum(range(1, 24)) * MS
    health = collector.health()
    assert (health.records, health.record_bytes) == (23, sum(map(len, records)))
    assert (health.spans_exported, health.unfinished, health.lost["malformed"]) == (23, 0, 0)
    assert "evicted" not in health.lost and collector.health(count_in_flight=True).lost["evicted"] == 0
