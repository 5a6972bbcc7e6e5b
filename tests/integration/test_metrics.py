"""Metrics over OTLP: request-duration histograms with exact counts per attribute set, and otelbpf's own counters.

A python client (requests, one keep-alive connection) calls the python app, both traced: every request is a
server span and a client span, and each lands in exactly one histogram series. Some requests fail (404, 500)
so the status and error attributes split the series.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.databases import Redis, start_redis
from tests.integration.helpers import CLIENTS, PYTHON, PausedClient, assert_summary, settle, stop_process
from tests.otlp_receiver import OtlpReceiver, ReceivedPoint

pytestmark = pytest.mark.integration

N = 23  # a prime: a count that comes out right by accident is unlikely
MISSING = 2  # 404s
ERRORS = 3  # 500s
REQUESTS = N + MISSING + ERRORS


def latest(points: list[ReceivedPoint]) -> dict[frozenset, ReceivedPoint]:
    """Cumulative points: the newest per attribute set (each export repeats the running totals)."""
    out: dict[frozenset, ReceivedPoint] = {}
    for p in points:
        key = frozenset(p.attributes.items())
        if key not in out or p.time_ns >= out[key].time_ns:
            out[key] = p
    return out


def counts(points: list[ReceivedPoint], delta: bool) -> dict[frozenset, int]:
    """Requests per attribute set: the newest total (cumulative), or every interval's added up (delta)."""
    if not delta:
        return {k: p.count for k, p in latest(points).items()}
    out: dict[frozenset, int] = {}
    for p in points:
        key = frozenset(p.attributes.items())
        out[key] = out.get(key, 0) + p.count
    return out


def own(receiver: OtlpReceiver, name: str, delta: bool) -> dict[frozenset, int]:
    """One of otelbpf's own counters, per attribute set: the newest total, or the deltas added up."""
    points = [p for p in receiver.metric_points(name) if p.resource.get("service.name") == "otelbpf"]
    if not delta:
        return {k: p.value for k, p in latest(points).items()}  # type: ignore[misc]
    out: dict[frozenset, int] = {}
    for p in points:
        key = frozenset(p.attributes.items())
        out[key] = out.get(key, 0) + int(p.value or 0)
    return out


@pytest.mark.parametrize(
    ("protocol", "temporality"), [("grpc", "cumulative"), ("http/protobuf", "cumulative"), ("grpc", "delta")]
)
def test_request_durations_and_own_counters(py_server, otelbpf, receiver, protocol, temporality):
    urls = [py_server.url(f"/items/{i}") for i in range(N)]
    urls += [py_server.url("/missing")] * MISSING + [py_server.url("/error")] * ERRORS
    client = PausedClient("session", urls)
    delta = temporality == "delta"
    try:
        run = otelbpf(
            "--pid", str(py_server.pid), "--pid", str(client.pid),
            "--metric-export-interval", "0.5", "--metric-temporality", temporality,
            receiver=receiver, protocol=protocol,
        )  # fmt: skip
        results = client.go()
        settle(receiver, 2 * REQUESTS)
        # The periodic export runs while otelbpf does: its own counters arrive before any exit.
        assert receiver.wait_for_metrics("otelbpf.spans.exported", timeout_s=10), receiver.metric_requests()
        res = run.stop()
    finally:
        client.stop()
    assert [r["status"] for r in results] == [200] * N + [404] * MISSING + [500] * ERRORS
    assert_summary(res, requests=2 * REQUESTS, exported=2 * REQUESTS)
    assert len(receiver.spans()) == 2 * REQUESTS

    common = {("http.request.method", "GET"), ("network.protocol.version", "1.1")}
    server = receiver.metric_points("http.server.request.duration")
    assert counts(server, delta) == {
        frozenset(common | {("url.scheme", "http"), ("http.response.status_code", 200),
                            ("http.route", "/items/{id}")}): N,
        frozenset(common | {("url.scheme", "http"), ("http.response.status_code", 404),
                            ("http.route", "/missing")}): MISSING,
        frozenset(common | {("url.scheme", "http"), ("http.response.status_code", 500), ("http.route", "/error"),
                            ("error.type", "500")}): ERRORS,
    }  # fmt: skip
    peer = {("server.address", "127.0.0.1"), ("server.port", py_server.port)}
    client_points = receiver.metric_points("http.client.request.duration")
    assert counts(client_points, delta) == {
        frozenset(common | peer | {("http.response.status_code", 200)}): N,
        frozenset(common | peer | {("http.response.status_code", 404), ("error.type", "404")}): MISSING,
        frozenset(common | peer | {("http.response.status_code", 500), ("error.type", "500")}): ERRORS,
    }
    for p in server + client_points:
        assert (p.unit, p.kind, p.temporality) == ("s", "histogram", 1 if delta else 2)
        assert sum(p.bucket_counts) == p.count and len(p.bucket_counts) == len(p.explicit_bounds) + 1 == 15
        assert 0 < p.sum < 10 * p.count and p.min is not None and 0 < p.min <= p.max < 10
        assert p.resource["process.pid"] in (py_server.pid, client.pid)
        assert p.protocol == ("grpc" if protocol == "grpc" else "http")
    assert {p.resource["process.pid"] for p in server} == {py_server.pid}
    assert {p.resource["process.pid"] for p in client_points} == {client.pid}

    # otelbpf's own counters, on its own resource: every exported span, nothing lost for any reason.
    assert own(receiver, "otelbpf.spans.exported", delta) == {frozenset(): 2 * REQUESTS}
    assert own(receiver, "otelbpf.requests.seen", delta) == {frozenset(): 2 * REQUESTS}
    lost = own(receiver, "otelbpf.spans.lost", delta)
    reasons = {dict(k)["otelbpf.loss.reason"] for k in lost}
    assert reasons == {"ringbuf_full", "sampled_out", "queue_full", "export_failed", "shutdown", "malformed", "evicted"}
    assert set(lost.values()) == {0}
    assert own(receiver, "otelbpf.ringbuf.records", delta)[frozenset()] >= 2 * REQUESTS
    limit = receiver.metric_points("otelbpf.rate_limit")[-1]
    # The load governor may have lowered it on a busy machine, never below --min-spans-per-second.
    assert (limit.kind, limit.unit) == ("gauge", "{request}/s") and 1000 <= limit.value <= 20000
    own_points = [p for p in receiver.metric_points() if p.metric.startswith("otelbpf.")]
    (resource,) = {frozenset(p.resource.items()) for p in own_points if not p.metric.startswith("otelbpf.tcp.")}
    assert dict(resource)["service.name"] == "otelbpf" and "host.name" in dict(resource)
    # The TCP facts' metrics are the traced processes': the client opened one connection, to the server.
    connects = receiver.metric_points("otelbpf.tcp.connect.duration")
    assert counts(connects, delta) == {frozenset(peer): 1}
    assert {p.resource["process.pid"] for p in connects} == {client.pid}
    if protocol == "http/protobuf":
        assert {r.path for r in receiver.metric_requests()} == {"/v1/metrics"}
        assert {r.path for r in receiver.requests()} == {"/v1/traces"}


def test_no_metrics_when_turned_off(py_server, otelbpf, receiver):
    run = otelbpf(
        "--pid", str(py_server.pid), "--metric-export-interval", "0.2", receiver=receiver,
        env={"OTEL_METRICS_EXPORTER": "none"},
    )  # fmt: skip
    client = PausedClient("urllib", [py_server.url("/items/1")])
    try:
        client.go()
        settle(receiver, 1)
        res = run.stop()
    finally:
        client.stop()
    assert_summary(res, requests=1, exported=1)
    assert receiver.metric_requests() == []


@pytest.fixture(scope="module")
def redis_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        stop_process(server.proc)


def test_database_operation_durations(redis_db, otelbpf, receiver):
    """One SET, then N LPUSHes the server refuses (WRONGTYPE): two series with exact counts."""
    argv = [PYTHON, str(CLIENTS / "db_client.py"), "redis", redis_db.url(), "error", str(N)]
    client = PausedClient(argv=argv)
    try:
        run = otelbpf("--pid", str(client.pid), receiver=receiver)
        results = client.go()
        settle(receiver, N + 1)
        res = run.stop()
    finally:
        client.stop()
    assert results["errors"] == N
    assert_summary(res, requests=N + 1, exported=N + 1)
    points = receiver.metric_points("db.client.operation.duration")
    got = counts(points, delta=False)
    base = {("db.system.name", "redis"), ("server.address", "127.0.0.1"), ("server.port", redis_db.port)}
    namespace = {k for k in next(iter(got)) if k[0] == "db.namespace"}  # as the spans name it, if they do
    assert got == {
        frozenset(base | namespace | {("db.operation.name", "SET"), ("db.query.summary", "SET")}): 1,
        frozenset(base | namespace | {("db.operation.name", "LPUSH"), ("db.query.summary", "LPUSH"),
                                      ("db.response.status_code", "WRONGTYPE"), ("error.type", "WRONGTYPE")}): N,
    }  # fmt: skip
    for p in points:
        assert (p.unit, p.temporality, len(p.explicit_bounds)) == ("s", 2, 9)
        assert p.resource["process.pid"] == client.pid
