"""The span linker on hand-made kernel events: parents by thread, connection and traceparent."""

from __future__ import annotations

import itertools

import pytest

from otelbpf import events
from otelbpf.correlate import IdGenerator
from otelbpf.events import RequestEvent
from otelbpf.linking import EVENT_LOOP, LINK_SOURCE, PARENT_SOURCE, TraceLinker
from otelbpf.spans import Resource, Span, SpanKind
from tests.factories import http_event, v4

FRONT, NODE, BACKEND = 100, 200, 300
IP = "127.0.0.1"


def make(
    pid: int,
    tid: int,
    role: int,
    start: int,
    end: int,
    local: int,
    peer: int,
    cause: int = 0,
    name: str = "",
    ids: IdGenerator | None = None,
    traceparent: tuple[bytes, bytes] | None = None,
) -> tuple[Span, RequestEvent]:
    """One span and the kernel event behind it (ports only: all on 127.0.0.1)."""
    ids = ids or IdGenerator(seed=start * 7 + pid)
    ev = http_event(
        role=role,
        pid=pid,
        tid=tid,
        start_ns=start,
        end_ns=end,
        local_addr=v4(IP),
        peer_addr=v4(IP),
        local_port=local,
        peer_port=peer,
        cause_ns=cause,
    )
    span = Span(
        trace_id=traceparent[0] if traceparent else ids.trace_id(),
        span_id=ids.span_id(),
        parent_span_id=traceparent[1] if traceparent else None,
        name=name or f"{pid}-{role}-{start}",
        kind=SpanKind.SERVER if role == events.ROLE_SERVER else SpanKind.CLIENT,
        start_ns=start,
        end_ns=end,
        resource=Resource((("process.pid", pid),)),
        attributes={
            "network.local.address": IP,
            "network.local.port": local,
            "network.peer.address": IP,
            "network.peer.port": peer,
        },
    )
    if traceparent:
        span.attributes[PARENT_SOURCE] = "traceparent"
    return span, ev


S, C = events.ROLE_SERVER, events.ROLE_CLIENT


def chain(offset: int = 0, front_port: int = 8000, node_port: int = 9000, backend_port: int = 9443) -> dict:
    """curl -> front (threaded) -> node -> backend; ports 5xxxx are the clients' ephemeral ports."""
    o = offset
    return {
        "front": make(FRONT, 11 + o, S, 100 + o, 1000 + o, front_port, 50000 + o),
        "front->node": make(FRONT, 11 + o, C, 200 + o, 800 + o, 51000 + o, node_port, cause=100 + o),
        "node": make(NODE, 21, S, 250 + o, 750 + o, node_port, 51000 + o),
        "node->backend": make(NODE, 21, C, 300 + o, 700 + o, 52000 + o, backend_port, cause=250 + o),
        "backend": make(BACKEND, 31 + o, S, 350 + o, 650 + o, backend_port, 52000 + o),
    }


def linker(window: float = 1.0, max_hold: float = 10.0, max_spans: int = 1000) -> TraceLinker:
    ids = IdGenerator(seed=1)
    return TraceLinker(ids.trace_id, ids.span_id, window, max_hold, max_spans)


def feed(lk: TraceLinker, items: list[tuple[Span, RequestEvent]], now: float = 0.0) -> None:
    for span, ev in items:
        lk.add(span, ev, now)


def tree(spans: dict) -> dict[str, tuple[str | None, str | None]]:
    """name -> (parent name, source)."""
    by_id = {s.span_id: n for n, (s, _) in spans.items()}
    return {
        n: (by_id.get(s.parent_span_id) if s.parent_span_id else None, s.attributes.get(PARENT_SOURCE))
        for n, (s, _) in spans.items()
    }


EXPECTED = {
    "front": (None, None),
    "front->node": ("front", "thread"),
    "node": ("front->node", "connection"),
    "node->backend": ("node", "thread"),
    "backend": ("node->backend", "connection"),
}


@pytest.mark.parametrize("order", list(itertools.permutations(range(5))))
def test_three_services_one_trace_in_any_arrival_order(order: tuple[int, ...]) -> None:
    spans = chain()
    names = list(spans)
    lk = linker()
    feed(lk, [spans[names[i]] for i in order])
    assert lk.take_ready(0.5) == []  # held for the window
    out = lk.take_ready(1.0)
    assert len(out) == 5
    assert len({s.trace_id for s in out}) == 1
    assert tree(spans) == EXPECTED
    assert len({s.span_id for s in out}) == 5
    for s in out:
        assert len(s.trace_id) == 16 and any(s.trace_id) and len(s.span_id) == 8 and any(s.span_id)
    assert lk.held == 0 and lk.placeholders == 0
    assert (lk.stats.thread, lk.stats.connection, lk.stats.event_loop) == (2, 2, 0)


def test_the_usual_order_children_first() -> None:
    spans = chain()
    lk = linker()
    for i, name in enumerate(["backend", "node->backend", "node", "front->node", "front"]):
        lk.add(*spans[name], now=i * 0.1)
    assert lk.take_ready(1.35) == []  # the last span arrived at 0.4: quiet until 1.4
    assert len(lk.take_ready(1.4)) == 5
    assert tree(spans) == EXPECTED


def test_concurrent_requests_do_not_cross_link_on_an_event_loop() -> None:
    # Two requests overlap in time; node serves both on one thread (tid 21).
    a, b = chain(0), chain(40, front_port=8000)
    lk = linker()
    feed(lk, list(a.values()) + list(b.values()))
    out = lk.take_ready(2.0)
    assert len(out) == 10 and len({s.trace_id for s in out}) == 2
    assert tree(a) == EXPECTED and tree(b) == EXPECTED
    assert a["front"][0].trace_id != b["front"][0].trace_id
    assert all(s.trace_id == a["front"][0].trace_id for s, _ in a.values())
    # node's client spans were made while the other request was in flight on the same thread.
    assert a["node->backend"][0].attributes[EVENT_LOOP] is True
    assert b["node->backend"][0].attributes[EVENT_LOOP] is True
    assert EVENT_LOOP not in a["front->node"][0].attributes  # its own thread: exact
    assert lk.stats.event_loop == 2


def test_no_cause_but_requests_in_flight_gives_links_not_a_parent() -> None:
    srv1 = make(NODE, 21, S, 100, 900, 9000, 50001)
    srv2 = make(NODE, 21, S, 150, 950, 9000, 50002)
    cli = make(NODE, 21, C, 200, 300, 52000, 9443, cause=0)  # the kernel saw no in-flight request
    lk = linker()
    feed(lk, [cli, srv1, srv2])
    out = lk.take_ready(2.0)
    assert len(out) == 3
    c = cli[0]
    assert c.parent_span_id is None and PARENT_SOURCE not in c.attributes
    assert {(link.trace_id, link.span_id) for link in c.links} == {
        (srv1[0].trace_id, srv1[0].span_id),
        (srv2[0].trace_id, srv2[0].span_id),
    }
    assert all(dict(link.attributes)[LINK_SOURCE] == "thread" for link in c.links)
    assert lk.stats.ambiguous == 1


def test_a_client_outside_any_request_is_a_root_without_links() -> None:
    cli = make(FRONT, 11, C, 200, 300, 51000, 9000)
    lk = linker()
    feed(lk, [cli])
    (out,) = lk.take_ready(1.0)
    assert out.parent_span_id is None and out.links == []


def test_traceparent_wins_and_children_follow_its_trace() -> None:
    remote_trace, remote_parent = bytes.fromhex("0af7651916cd43dd8448eb211c80319c"), bytes.fromhex("b7ad6b7169203331")
    srv = make(FRONT, 11, S, 100, 1000, 8000, 50000, traceparent=(remote_trace, remote_parent))
    cli = make(FRONT, 11, C, 200, 800, 51000, 9000, cause=100)
    callee = make(NODE, 21, S, 250, 750, 9000, 51000)
    lk = linker()
    feed(lk, [callee, cli, srv])
    out = lk.take_ready(1.0)
    assert {s.trace_id for s in out} == {remote_trace}
    assert srv[0].parent_span_id == remote_parent and srv[0].attributes[PARENT_SOURCE] == "traceparent"
    assert cli[0].parent_span_id == srv[0].span_id and callee[0].parent_span_id == cli[0].span_id


def test_a_server_with_traceparent_is_not_reparented_by_connection() -> None:
    remote = (bytes.fromhex("0af7651916cd43dd8448eb211c80319c"), bytes.fromhex("b7ad6b7169203331"))
    cli = make(FRONT, 11, C, 200, 800, 51000, 9000)
    srv = make(NODE, 21, S, 250, 750, 9000, 51000, traceparent=remote)
    lk = linker()
    feed(lk, [srv, cli])
    lk.take_ready(1.0)
    assert srv[0].parent_span_id == remote[1] and srv[0].trace_id == remote[0]
    assert cli[0].trace_id != remote[0]


def test_keep_alive_requests_pair_by_time_on_one_connection() -> None:
    # Two requests, one after the other, on the same 4-tuple; the client's read of response 1 can
    # return before the server's write syscall does: a few ns of overlap with the next request.
    c1 = make(FRONT, 11, C, 100, 500, 51000, 9000)
    s1 = make(NODE, 21, S, 110, 505, 9000, 51000)
    c2 = make(FRONT, 11, C, 503, 900, 51000, 9000)
    s2 = make(NODE, 21, S, 510, 890, 9000, 51000)
    lk = linker()
    feed(lk, [s1, c1, s2, c2])
    lk.take_ready(1.0)
    assert s1[0].parent_span_id == c1[0].span_id and s2[0].parent_span_id == c2[0].span_id
    assert s1[0].trace_id == c1[0].trace_id != s2[0].trace_id == c2[0].trace_id


def test_pipelined_overlap_is_ambiguous_and_linked() -> None:
    c1 = make(FRONT, 11, C, 100, 900, 51000, 9000)
    c2 = make(FRONT, 11, C, 101, 905, 51000, 9000)
    srv = make(NODE, 21, S, 120, 880, 9000, 51000)
    lk = linker()
    feed(lk, [c1, c2, srv])
    lk.take_ready(1.0)
    assert srv[0].parent_span_id is None
    assert {link.span_id for link in srv[0].links} == {c1[0].span_id, c2[0].span_id}


def test_a_parent_later_than_the_max_hold_takes_the_reserved_ids() -> None:
    spans = chain()
    lk = linker(window=1.0, max_hold=3.0)
    feed(lk, [spans["backend"], spans["node->backend"]], now=0.0)
    assert lk.take_ready(2.0) == []  # waiting for node's server span, still running
    early = lk.take_ready(3.0)
    assert len(early) == 2
    reserved_parent = spans["node->backend"][0].parent_span_id
    assert reserved_parent is not None and spans["node->backend"][0].attributes[PARENT_SOURCE] == "thread"
    assert lk.stats.reserved == 1
    feed(lk, [spans["node"], spans["front->node"], spans["front"]], now=5.0)
    late = lk.take_ready(6.0)
    assert len(late) == 3
    assert spans["node"][0].span_id == reserved_parent
    assert {s.trace_id for s in early + late} == {early[0].trace_id}
    assert tree(spans) == EXPECTED


def test_reserved_parents_that_never_come_are_counted_and_forgotten() -> None:
    cli = make(NODE, 21, C, 300, 700, 52000, 9443, cause=250)
    lk = linker(window=1.0, max_hold=2.0)
    feed(lk, [cli])
    assert len(lk.take_ready(2.0)) == 1
    assert lk.placeholders == 1
    lk.take_ready(1000.0)
    assert lk.stats.parents_never_seen == 1 and lk.placeholders == 0
    assert lk._servers == {} and lk._conn_clients == {} and lk._thread_clients == {}


def test_indexes_drain_after_everything_expires() -> None:
    lk = linker()
    for i in range(20):
        feed(lk, list(chain(i * 2000).values()), now=i * 0.01)
    assert len(lk.take_ready(2.0)) == 100
    lk.take_ready(100.0)
    assert lk._servers == {} and lk._conn_clients == {} and lk._conn_servers == {}
    assert lk._thread_servers == {} and lk._thread_clients == {}
    assert lk._heap == [] and not lk._expiry and not lk._reserved_expiry


def test_a_full_hold_buffer_releases_the_oldest_trees_early() -> None:
    lk = linker(max_spans=5)
    feed(lk, list(chain(0).values()), now=0.0)
    assert lk.take_early() == []
    feed(lk, [make(FRONT, 99, S, 5000, 6000, 8000, 50999)], now=0.1)
    early = lk.take_early()
    assert len(early) == 5 and lk.stats.released_early == 5
    assert len({s.trace_id for s in early}) == 1
    assert lk.held == 1


def test_flush_releases_everything() -> None:
    spans = chain()
    lk = linker()
    feed(lk, list(spans.values()))
    assert len(lk.flush(0.0)) == 5
    assert tree(spans) == EXPECTED


def test_a_late_child_joins_its_exported_parents_trace() -> None:
    # A fire-and-forget call: the client request ends after its parent was already exported.
    srv = make(FRONT, 11, S, 100, 200, 8000, 50000)
    cli = make(FRONT, 11, C, 150, 5000, 51000, 9000, cause=100)
    lk = linker()
    feed(lk, [srv], now=0.0)
    (parent,) = lk.take_ready(1.0)
    feed(lk, [cli], now=4.0)
    (child,) = lk.take_ready(5.0)
    assert child.trace_id == parent.trace_id and child.parent_span_id == parent.span_id


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        linker(window=-1)
    with pytest.raises(ValueError):
        linker(window=5, max_hold=1)
    with pytest.raises(ValueError):
        linker(max_spans=0)


def test_keep_alive_from_an_untraced_client_is_not_held_after_the_first_request() -> None:
    lk = linker()
    first = make(NODE, 21, S, 100, 200, 9000, 51000)
    feed(lk, [first], now=0.0)
    assert lk.take_early() == [] and lk.take_ready(0.5) == []  # held: a caller might still come
    assert lk.take_ready(1.0) == [first[0]]
    second = make(NODE, 21, S, 300, 400, 9000, 51000)
    feed(lk, [second], now=1.1)
    assert lk.take_early() == [second[0]]  # the connection had no traced caller: out at once
    assert lk.held == 0
    # A traced caller shows up on the connection after all: its server spans wait for it again.
    feed(lk, [make(FRONT, 11, C, 450, 700, 51000, 9000)], now=1.2)
    third = make(NODE, 21, S, 500, 650, 9000, 51000)
    feed(lk, [third], now=1.2)
    assert lk.take_early() == []
    lk.take_ready(3.0)
    assert third[0].attributes[PARENT_SOURCE] == "connection"
