"""TCP facts on spans and failed connects as spans, from hand-made kernel records (no root)."""

from __future__ import annotations

import errno
import os
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otelbpf import events
from otelbpf.cli import parse_args
from otelbpf.correlate import IdGenerator, SpanBuilder
from otelbpf.events import DecodeError, decode, decode_connect
from otelbpf.metrics import OVERFLOW, RequestMetrics
from otelbpf.resources import ResourceCache
from otelbpf.runner import pipeline
from otelbpf.spans import SpanKind, StatusCode
from otelbpf.tcp_facts import connect_error_type
from otelbpf.tcp_metrics import TcpMetrics
from tests.factories import connect_record_bytes, http_event, record_bytes, v4
from tests.unit.test_correlate import CURL, OFFSET, FixedClock
from tests.unit.test_metrics import Kernel, Queue, Ring

KNOWN = events.TCP_KNOWN


@pytest.fixture()
def builder() -> SpanBuilder:
    return SpanBuilder(ResourceCache(env={}), FixedClock(), IdGenerator(seed=7))


def tcp_event(**kw: object) -> events.RequestEvent:
    return http_event(req=CURL, pid=os.getpid(), **kw)


def failed_connect(err: int, **kw: object) -> events.RequestEvent:
    base: dict[str, object] = dict(
        protocol=0, role=events.ROLE_CLIENT, status=err, pid=os.getpid(), tid=77, start_ns=1_000, end_ns=9_000,
        bytes_in=0, bytes_out=0, sock_id=0xABC, local_addr=v4("127.0.0.1"), peer_addr=v4("127.0.0.1"),
        local_port=40000, peer_port=9, connect_us=8, tcp_flags=events.TCP_CONNECT, cause_ns=500,
    )  # fmt: skip
    base.update(kw)
    return http_event(**base)


def test_facts_go_on_the_span_of_each_request(builder: SpanBuilder) -> None:
    span = builder.build(tcp_event(retransmits=3, srtt_us=1250, tcp_flags=KNOWN))
    attrs = span.all_attributes()
    assert (attrs["otelbpf.tcp.retransmits"], attrs["otelbpf.tcp.srtt_us"], attrs["otelbpf.tcp.reset"]) == (
        3,
        1250,
        False,
    )
    assert "otelbpf.tcp.connect_us" not in attrs
    # The facts differ per request: a second request of the same head and connection has its own.
    again = builder.build(tcp_event(retransmits=0, srtt_us=40, tcp_flags=KNOWN))
    assert again.shared is span.shared
    assert (again.attributes["otelbpf.tcp.retransmits"], again.attributes["otelbpf.tcp.srtt_us"]) == (0, 40)


def test_connect_time_only_where_the_kernel_says(builder: SpanBuilder) -> None:
    span = builder.build(tcp_event(role=events.ROLE_CLIENT, connect_us=215, tcp_flags=KNOWN | events.TCP_CONNECT))
    assert span.attributes["otelbpf.tcp.connect_us"] == 215


def test_no_facts_means_no_attributes(builder: SpanBuilder) -> None:
    # A socket the kernel could not read (a TLS session whose socket was not seen): unknown, not zero.
    attrs = builder.build(tcp_event()).all_attributes()
    assert not [k for k in attrs if k.startswith("otelbpf.tcp.")]


def test_a_reset_breaking_the_request_is_connection_reset(builder: SpanBuilder) -> None:
    span = builder.build(
        tcp_event(role=events.ROLE_CLIENT, status=0, end=events.END_NO_RESPONSE, tcp_flags=KNOWN | events.TCP_RESET)
    )
    assert span.status is StatusCode.ERROR
    assert span.attributes["error.type"] == "connection_reset"
    assert span.attributes["otelbpf.tcp.reset"] is True
    assert "reset" in span.status_message


def test_a_closed_connection_without_reset_stays_connection_closed(builder: SpanBuilder) -> None:
    span = builder.build(tcp_event(role=events.ROLE_CLIENT, status=0, end=events.END_CONN_CLOSED, tcp_flags=KNOWN))
    assert span.attributes["error.type"] == "connection_closed"


def test_a_request_that_completed_keeps_its_outcome_despite_a_reset(builder: SpanBuilder) -> None:
    span = builder.build(tcp_event(tcp_flags=KNOWN | events.TCP_RESET))
    assert span.status is StatusCode.UNSET and "error.type" not in span.attributes
    assert span.attributes["otelbpf.tcp.reset"] is True


@pytest.mark.parametrize(
    ("err", "kind"),
    [
        (errno.ECONNREFUSED, "connection_refused"),
        (errno.ETIMEDOUT, "timeout"),
        (0, "timeout"),
        (errno.EHOSTUNREACH, "unreachable"),
        (errno.ENETUNREACH, "unreachable"),
        (errno.EACCES, "eacces"),
        (60000, "_other"),
    ],
)
def test_connect_error_types(err: int, kind: str) -> None:
    assert connect_error_type(err) == kind


def test_a_failed_connect_record_becomes_a_connect_error_span(builder: SpanBuilder) -> None:
    ev = decode_connect(connect_record_bytes(failed_connect(errno.ECONNREFUSED)))
    assert (ev.cause_ns, ev.tid, ev.status, ev.connect_us) == (500, 77, errno.ECONNREFUSED, 8)
    span = builder.build_connect(ev)
    assert (span.name, span.kind, span.status) == ("connect", SpanKind.CLIENT, StatusCode.ERROR)
    assert span.status_message == os.strerror(errno.ECONNREFUSED)
    assert (span.start_ns, span.end_ns) == (OFFSET + 1_000, OFFSET + 9_000)
    assert span.attributes == {
        "network.transport": "tcp",
        "network.type": "ipv4",
        "network.peer.address": "127.0.0.1",
        "network.peer.port": 9,
        "network.local.address": "127.0.0.1",
        "network.local.port": 40000,
        "thread.id": 77,
        "error.type": "connection_refused",
        "otelbpf.tcp.connect_us": 8,
    }


def test_connect_records_that_break_the_contract_are_refused() -> None:
    good = connect_record_bytes(failed_connect(errno.ECONNREFUSED))
    with pytest.raises(DecodeError, match="shorter"):
        decode_connect(good[:100])
    with pytest.raises(DecodeError, match="not a connect record"):
        decode_connect(bytes([events.EVENT_REQUEST]) + good[1:])
    with pytest.raises(DecodeError, match="role 1"):
        decode_connect(good[:2] + bytes([events.ROLE_SERVER]) + good[3:])
    with pytest.raises(DecodeError, match="before start"):
        decode_connect(connect_record_bytes(failed_connect(0, start_ns=10, end_ns=5)))
    # And a request record cannot pass for one, nor the other way round.
    with pytest.raises(DecodeError, match="unknown event type 4"):
        decode(good + bytes(8))


@given(st.binary(max_size=200))
def test_connect_decoder_fuzzed(raw: bytes) -> None:
    try:
        decode_connect(raw)
    except DecodeError:
        pass


def test_request_record_round_trips_its_facts() -> None:
    ev = tcp_event(retransmits=7, srtt_us=99, connect_us=1234, tcp_flags=KNOWN | events.TCP_CONNECT)
    back = decode(record_bytes(ev))
    assert (back.retransmits, back.srtt_us, back.connect_us, back.tcp_flags) == (7, 99, 1234, 5)


@pytest.mark.parametrize("link", [True, False])
def test_the_collector_turns_connect_records_into_spans(link: bool) -> None:
    # Through the whole pipeline, linked or not: a connect record is neither malformed nor lost.
    records = [connect_record_bytes(failed_connect(errno.ECONNREFUSED)), record_bytes(tcp_event(tcp_flags=KNOWN))]
    queue = Queue()
    args = parse_args(["run", "--link-window", "0.5" if link else "0"], {})
    collector = pipeline(args, {}, Kernel(), Ring(records), queue, 1)  # type: ignore[arg-type]
    assert collector.process_once() == 2
    collector.release_linked(flush=True)
    assert sorted(s.name for s in queue.spans) == ["GET /users/{id}/orders", "connect"]
    assert collector.health().lost["malformed"] == 0


def test_ipv6_failed_connect_addresses(builder: SpanBuilder) -> None:
    addr = socket.inet_pton(socket.AF_INET6, "fd00::2")
    ev = failed_connect(errno.EHOSTUNREACH, family=socket.AF_INET6, peer_addr=addr, local_addr=addr)
    span = builder.build_connect(decode_connect(connect_record_bytes(ev)))
    assert (span.attributes["network.peer.address"], span.attributes["network.type"]) == ("fd00::2", "ipv6")
    assert span.attributes["error.type"] == "unreachable"


# --- metrics ---------------------------------------------------------------------------------------------------


def metric_points(metrics: TcpMetrics) -> dict[str, dict]:
    return {st.instrument.name: st.points for st in metrics.collect()}


def test_tcp_metrics_count_retransmits_connects_and_failures(builder: SpanBuilder) -> None:
    metrics = TcpMetrics(delta=True)
    client = events.ROLE_CLIENT
    spans = [
        builder.build(tcp_event(role=client, retransmits=2, tcp_flags=KNOWN | events.TCP_CONNECT, connect_us=300)),
        builder.build(tcp_event(role=client, retransmits=0, tcp_flags=KNOWN)),
        builder.build(tcp_event(retransmits=5, tcp_flags=KNOWN)),  # a server span: its peer is a client
        builder.build_connect(decode_connect(connect_record_bytes(failed_connect(errno.ECONNREFUSED)))),
        builder.build_connect(decode_connect(connect_record_bytes(failed_connect(errno.ECONNREFUSED)))),
    ]
    RequestMetrics(also=[metrics]).record(spans)
    points = metric_points(metrics)
    to_server = (("server.address", "127.0.0.2"), ("server.port", 51000))
    assert points["otelbpf.tcp.retransmits"] == {to_server: 2, (("client.address", "127.0.0.2"),): 5}
    refused = (("error.type", "connection_refused"), ("server.address", "127.0.0.1"), ("server.port", 9))
    assert points["otelbpf.tcp.connect.failures"] == {refused: 2}
    durations = points["otelbpf.tcp.connect.duration"]
    assert (durations[to_server].count, durations[to_server].total) == (1, 300_000)
    assert (durations[refused].count, durations[refused].total) == (2, 16_000)
    assert metric_points(metrics) == {}  # delta: the next collection starts afresh


def test_tcp_metrics_stay_bounded(builder: SpanBuilder) -> None:
    metrics = TcpMetrics(max_series=2)
    for port in range(5):
        ev = failed_connect(errno.ECONNREFUSED, peer_port=port + 1)
        metrics.record([builder.build_connect(decode_connect(connect_record_bytes(ev)))])
    points = metric_points(metrics)
    assert len(points["otelbpf.tcp.connect.failures"]) == 3  # two series and the overflow one
    assert points["otelbpf.tcp.connect.failures"][OVERFLOW] == 3
    assert metrics.overflowed > 0


def test_tcp_metrics_notes_say_what_was_not_measured(builder: SpanBuilder) -> None:
    metrics = TcpMetrics(max_series=1, max_groups=1)
    records = [connect_record_bytes(failed_connect(0, peer_port=port)) for port in (1, 2)]
    spans = [builder.build_connect(decode_connect(raw)) for raw in records]
    requests = RequestMetrics(also=[metrics])
    requests.record(spans)
    notes = requests.also_notes()
    # The connect histogram took the one group there was, and its one series went to the first peer.
    assert notes["TCP facts counted in an overflow metric series (too many peers)"] == 1
    # The failure counter had no group left, for either failure.
    assert notes["TCP facts not measured (too many resources with metrics)"] == 2


def test_tcp_facts_flag_and_environment() -> None:
    assert parse_args(["run"], {}).tcp_facts is True
    assert parse_args(["run", "--no-tcp-facts"], {}).tcp_facts is False
    assert parse_args(["run"], {"OTELBPF_TCP_FACTS": "false"}).tcp_facts is False
    from otelbpf.probes import ProbeSettings

    assert "-DTCP_FACTS=0" in ProbeSettings(tcp_facts=False).cflags()
    assert "-DTCP_FACTS=1" in ProbeSettings().cflags()
