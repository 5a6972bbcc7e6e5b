"""Tests for otelbpf.console: the terminal waterfall printer and its queue."""

from __future__ import annotations

import io
import re

from otelbpf.console import ConsolePrinter, ConsoleQueue
from otelbpf.spans import Resource, Span, SpanKind, SpanLink, StatusCode

T0 = 1_700_000_000_000_000_000
TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
FRONTEND = Resource((("service.name", "frontend"), ("process.pid", 100)))
BACKEND = Resource((("service.name", "backend"), ("process.pid", 200)))


def sid(n: int) -> bytes:
    return n.to_bytes(8, "big")


def three_span_tree(trace: bytes = TRACE, t0: int = T0) -> list[Span]:
    """A server span with two client children; given out of order, as the kernel would finish them."""
    return [
        Span(trace, sid(3), "SELECT", SpanKind.CLIENT, t0 + 7_000_000, t0 + 8_000_000, BACKEND,
             {}, sid(1), StatusCode.ERROR, "timeout"),
        Span(trace, sid(2), "GET", SpanKind.CLIENT, t0 + 2_000_000, t0 + 7_000_000, BACKEND,
             {"http.response.status_code": 200}, sid(1)),
        Span(trace, sid(1), "GET /users", SpanKind.SERVER, t0, t0 + 10_000_000, FRONTEND,
             {"http.response.status_code": 200}),
    ]  # fmt: skip


EXPECTED_TREE = [
    "trace 0af7651916cd43dd8448eb211c80319c frontend 10.00 ms (3 spans, 2 services)",
    "  SERVER GET /users 200  10.00 ms  frontend  pid=100  |##############################|",
    "  |- CLIENT GET 200       5.00 ms  backend   pid=200  |      ###############         |",
    "  `- CLIENT SELECT        1.00 ms  backend   pid=200  |                     ###      |  ERROR timeout",
]


def render(spans: list[Span], **kw: object) -> str:
    out = io.StringIO()  # no encoding: the ASCII connectors and bar
    ConsolePrinter(out, **kw).print_spans(spans)
    return out.getvalue()


def render_encoded(spans: list[Span], encoding: str) -> str:
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding=encoding)
    ConsolePrinter(stream, color=False).print_spans(spans)
    return raw.getvalue().decode(encoding)


MS = 1_000_000
TRACE3 = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
FRONT = Resource((("service.name", "front"), ("process.pid", 100)))  # Python
CART = Resource((("service.name", "cart"), ("process.pid", 200)))  # Node
STOCK = Resource((("service.name", "stock"), ("process.pid", 300)))  # Python


def http(code: int, source: str | None = None, **extra: object) -> dict:
    attrs: dict = {"http.response.status_code": code}
    if source is not None:
        attrs["otelbpf.parent.source"] = source
    return attrs | extra


def at(ms: float) -> int:
    return T0 + round(ms * MS)


def three_service_trace() -> list[Span]:
    """front (Python) -> cart (Node) -> stock (Python) in one trace, each hop parented another way."""
    links = [SpanLink(TRACE, sid(1)), SpanLink(TRACE, sid(2))]
    loop = {"otelbpf.parent.event_loop": True}  # Node: one thread runs every request
    spans = [
        Span(TRACE3, sid(1), "GET /buy", SpanKind.SERVER, at(0), at(12), FRONT, http(200), links=links),
        Span(TRACE3, sid(2), "GET", SpanKind.CLIENT, at(1), at(9), FRONT, http(200, "thread"), sid(1)),
        Span(TRACE3, sid(3), "GET /cart", SpanKind.SERVER, at(1.5), at(8.5), CART, http(200, "connection"), sid(2)),
        Span(TRACE3, sid(4), "GET", SpanKind.CLIENT, at(2), at(8), CART, http(200, "thread", **loop), sid(3)),
        Span(TRACE3, sid(5), "GET /qty", SpanKind.SERVER, at(2.5), at(7.5), STOCK, http(200, "traceparent"), sid(4)),
        Span(TRACE3, sid(6), "POST", SpanKind.CLIENT, at(9.5), at(11), FRONT, http(201, "thread"), sid(1)),
    ]
    return spans[::-1]  # the order spans finish in: leaves first


EXPECTED_THREE_SERVICES_ASCII = [
    "trace 4bf92f3577b34da6a3ce929d0e0e4736 front 12.00 ms (6 spans, 3 services)",
    "  SERVER GET /buy 200 (+2 links)                 12.00 ms  front  pid=100  |##############################|",
    "  |- CLIENT GET 200 [thread]                      8.00 ms  front  pid=100  |  #####################       |",
    "  |  `- SERVER GET /cart 200 [connection]         7.00 ms  cart   pid=200  |   ###################        |",
    "  |     `- CLIENT GET 200 [thread~]               6.00 ms  cart   pid=200  |     ###############          |",
    "  |        `- SERVER GET /qty 200 [traceparent]   5.00 ms  stock  pid=300  |      #############           |",
    "  `- CLIENT POST 201 [thread]                     1.50 ms  front  pid=100  |                       #####  |",
]


def test_three_span_waterfall_exact():
    assert render(three_span_tree()).splitlines() == EXPECTED_TREE


def test_traces_grouped_and_ordered_by_start():
    other = bytes.fromhex("11" * 16)
    spans = three_span_tree(other, T0 + 50_000_000) + three_span_tree()
    lines = render(spans).splitlines()
    assert [line for line in lines if line.startswith("trace ")] == [
        f"trace {TRACE.hex()} frontend 10.00 ms (3 spans, 2 services)",
        f"trace {other.hex()} frontend 10.00 ms (3 spans, 2 services)",
    ]
    assert len(lines) == 8


def test_missing_parent_makes_a_root_and_missing_attrs_are_omitted():
    orphan = Span(TRACE, sid(9), "POST /x", SpanKind.CLIENT, T0, T0 + 2_500_000,
                  Resource((("service.name", "svc"),)), {}, parent_span_id=sid(77))  # fmt: skip
    assert render([orphan]).splitlines() == [
        "trace 0af7651916cd43dd8448eb211c80319c svc 2.50 ms (1 span, 1 service)",
        "  CLIENT POST /x (parent not shown)  2.50 ms  svc  |##############################|",
    ]


def test_parent_cycle_still_prints_every_span():
    a = Span(TRACE, sid(1), "a", SpanKind.SERVER, T0, T0 + 1000, FRONTEND, parent_span_id=sid(2))
    b = Span(TRACE, sid(2), "b", SpanKind.SERVER, T0 + 10, T0 + 900, FRONTEND, parent_span_id=sid(1))
    lines = render([a, b]).splitlines()
    assert len(lines) == 3 and "SERVER a" in lines[1] and "SERVER b" in lines[2]
    assert "parent not shown" not in "".join(lines)  # both parents are in the batch


def test_color_only_when_asked_or_tty():
    assert "\x1b[" not in render(three_span_tree())

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    ConsolePrinter(tty).print_spans(three_span_tree())
    assert "\x1b[31m" in tty.getvalue()  # ERROR in red
    tty = Tty()
    ConsolePrinter(tty, color=False).print_spans(three_span_tree())
    assert tty.getvalue().splitlines() == EXPECTED_TREE
    colored = render(three_span_tree(), color=True).splitlines()
    assert colored[0] == f"\x1b[1m{EXPECTED_TREE[0]}\x1b[0m"
    assert colored[3].endswith("\x1b[31m\x1b[1mERROR timeout\x1b[0m")


def test_block_bar_on_utf8_streams():
    assert "|" + "\u2588" * 30 + "|" in render_encoded(three_span_tree(), "utf-8")


def test_three_service_tree_exact_ascii():
    assert render(three_service_trace()).splitlines() == EXPECTED_THREE_SERVICES_ASCII
    # A stream with a non-UTF-8 encoding gets the same ASCII rendering.
    assert render_encoded(three_service_trace(), "latin-1").splitlines() == EXPECTED_THREE_SERVICES_ASCII


def test_three_service_tree_exact_utf8():
    expected = [EXPECTED_THREE_SERVICES_ASCII[0]]
    for line in EXPECTED_THREE_SERVICES_ASCII[1:]:
        cut = line.index("pid=")  # connectors live before it, the bar after it
        tree = line[:cut].replace("|- ", "\u251c\u2500 ").replace("`- ", "\u2514\u2500 ").replace("|", "\u2502")
        expected.append(tree + line[cut:].replace("#", "\u2588"))
    assert render_encoded(three_service_trace(), "utf-8").splitlines() == expected
    assert expected[4].startswith("  \u2502     \u2514\u2500 CLIENT GET 200 [thread~]  ")
    assert expected[6].startswith("  \u2514\u2500 CLIENT POST 201 [thread]  ")


def test_connectors_for_siblings_nested_under_a_non_last_child():
    # root -> (a -> (a1, a2), b): a's children need a "|" for b, which comes after them.
    res = Resource((("service.name", "s"),))

    def span(n: int, parent: int | None) -> Span:
        return Span(TRACE, sid(n), f"s{n}", SpanKind.INTERNAL, T0 + n, T0 + n + 10, res,
                    parent_span_id=sid(parent) if parent else None)  # fmt: skip

    lines = render([span(5, 1), span(4, 2), span(3, 2), span(2, 1), span(1, None)]).splitlines()[1:]
    assert [line.split("0.00 ms")[0].rstrip() for line in lines] == [
        "  INTERNAL s1",
        "  |- INTERNAL s2",
        "  |  |- INTERNAL s3",
        "  |  `- INTERNAL s4",
        "  `- INTERNAL s5",
    ]


def test_parent_source_markers():
    spans = three_span_tree()  # SELECT, GET, GET /users
    for span, source in zip(spans, ["thread", "connection", "traceparent"], strict=True):
        span.attributes["otelbpf.parent.source"] = source
    lines = render(spans).splitlines()
    assert lines[1].startswith("  SERVER GET /users 200 [traceparent]  ")
    assert lines[2].startswith("  |- CLIENT GET 200 [connection]       ")
    assert lines[3].startswith("  `- CLIENT SELECT [thread]            ")
    spans[0].attributes["otelbpf.parent.event_loop"] = True
    assert render(spans).splitlines()[3].startswith("  `- CLIENT SELECT [thread~]  ")
    spans[0].attributes["otelbpf.parent.event_loop"] = False
    assert render(spans).splitlines()[3].startswith("  `- CLIENT SELECT [thread]  ")
    # Without a source there is no marker, even with the event-loop flag.
    spans[0].attributes["otelbpf.parent.event_loop"] = True
    del spans[0].attributes["otelbpf.parent.source"]
    assert render(spans).splitlines()[3].startswith("  `- CLIENT SELECT  ")
    assert "[" not in render(three_span_tree())


def test_links_marker():
    spans = three_span_tree()
    spans[2].links = [SpanLink(TRACE, sid(7))]
    spans[1].links = [SpanLink(TRACE, sid(7)), SpanLink(TRACE, sid(8), "k=v", (("a", 1),))]
    lines = render(spans).splitlines()
    assert lines[1].startswith("  SERVER GET /users 200 (+1 link)  ")
    assert lines[2].startswith("  |- CLIENT GET 200 (+2 links)      ")
    assert lines[3].startswith("  `- CLIENT SELECT                  ")


def test_header_counts_spans_and_distinct_services():
    spans = three_span_tree()
    assert render(spans).splitlines()[0].endswith(" 10.00 ms (3 spans, 2 services)")
    assert render(spans[2:]).splitlines()[0].endswith(" 10.00 ms (1 span, 1 service)")
    other_pid = Resource((("service.name", "backend"), ("process.pid", 201)))
    spans[0].resource = other_pid  # same service in another process: still one service
    assert render(spans).splitlines()[0].endswith("(3 spans, 2 services)")


def test_parent_not_shown_only_on_roots_with_a_missing_parent():
    spans = three_span_tree()
    spans[2].parent_span_id = sid(99)  # the server span's caller is in another batch
    lines = render(spans).splitlines()
    assert lines[1].startswith("  SERVER GET /users 200 (parent not shown)  ")
    assert "parent not shown" not in "".join(lines[2:])


def test_markers_and_connectors_are_dim_in_color():
    spans = three_service_trace()
    colored = render(spans, color=True).splitlines()
    assert "\x1b[2m|- \x1b[0m\x1b[35mCLIENT\x1b[0m GET \x1b[32m200\x1b[0m \x1b[2m[thread]\x1b[0m" in colored[2]
    assert "\x1b[2m(+2 links)\x1b[0m" in colored[1]
    # Colour does not change the layout: stripping the escapes gives the plain rendering.
    assert [re.sub("\x1b\\[[0-9;]*m", "", line) for line in colored] == EXPECTED_THREE_SERVICES_ASCII


def test_console_queue_prints_and_counts():
    out = io.StringIO()
    queue = ConsoleQueue(ConsolePrinter(out), schedule_delay_s=5.0)
    assert queue.submit(three_span_tree()) == 3
    assert queue.flush(2.0)
    assert out.getvalue().splitlines() == EXPECTED_TREE
    queue.shutdown(1.0)
    stats = queue.stats()
    assert stats.exported == 3 and stats.dropped == {"queue_full": 0, "export_failed": 0, "shutdown": 0}


def test_console_queue_counts_closed_stream_as_failed():
    out = io.StringIO()
    out.close()
    queue = ConsoleQueue(ConsolePrinter(out, color=False), schedule_delay_s=5.0)
    queue.submit(three_span_tree())
    assert queue.flush(2.0)
    queue.shutdown(1.0)
    stats = queue.stats()
    assert stats.exported == 0 and stats.dropped["export_failed"] == 3 and "console output failed" in stats.last_error


def test_https_spans_are_marked():
    spans = three_span_tree()
    spans[1].attributes["url.scheme"] = "https"
    spans[2].attributes["url.scheme"] = "http"
    assert render(spans).splitlines()[1:3] == [
        "  SERVER GET /users 200    10.00 ms  frontend  pid=100  |##############################|",
        "  |- CLIENT GET 200 https   5.00 ms  backend   pid=200  |      ###############         |",
    ]
    colored = render(spans, color=True)
    assert "https" in colored and colored.count("https") == 1


def test_tcp_failures_and_retransmits_are_shown():
    connect = {"error.type": "connection_refused", "network.peer.address": "10.0.0.9", "network.peer.port": 5432}
    spans = [
        Span(TRACE, sid(2), "connect", SpanKind.CLIENT, T0 + 1 * MS, T0 + 2 * MS, FRONTEND, connect, sid(1),
             StatusCode.ERROR, "Connection refused"),
        Span(TRACE, sid(1), "GET /users", SpanKind.SERVER, T0, T0 + 10 * MS, FRONTEND,
             {"http.response.status_code": 200, "otelbpf.tcp.retransmits": 3}),
    ]  # fmt: skip
    lines = render(spans, color=False).splitlines()
    assert "SERVER GET /users 200 (3 retransmits)" in lines[1]
    assert "CLIENT connect connection_refused 10.0.0.9:5432" in lines[2]
