"""Tests for otelbpf.console: the terminal waterfall printer and its queue."""

from __future__ import annotations

import io

from otelbpf.console import ConsolePrinter, ConsoleQueue
from otelbpf.spans import Resource, Span, SpanKind, StatusCode

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
    "trace 0af7651916cd43dd8448eb211c80319c frontend 10.00 ms",
    "  SERVER GET /users 200  10.00 ms  frontend  pid=100  |##############################|",
    "    CLIENT GET 200        5.00 ms  backend   pid=200  |      ###############         |",
    "    CLIENT SELECT         1.00 ms  backend   pid=200  |                     ###      |  ERROR timeout",
]


def render(spans: list[Span], **kw: object) -> str:
    out = io.StringIO()
    ConsolePrinter(out, **kw).print_spans(spans)
    return out.getvalue()


def test_three_span_waterfall_exact():
    assert render(three_span_tree()).splitlines() == EXPECTED_TREE


def test_traces_grouped_and_ordered_by_start():
    other = bytes.fromhex("11" * 16)
    spans = three_span_tree(other, T0 + 50_000_000) + three_span_tree()
    lines = render(spans).splitlines()
    assert [line for line in lines if line.startswith("trace ")] == [
        f"trace {TRACE.hex()} frontend 10.00 ms",
        f"trace {other.hex()} frontend 10.00 ms",
    ]
    assert len(lines) == 8


def test_missing_parent_makes_a_root_and_missing_attrs_are_omitted():
    orphan = Span(TRACE, sid(9), "POST /x", SpanKind.CLIENT, T0, T0 + 2_500_000,
                  Resource((("service.name", "svc"),)), {}, parent_span_id=sid(77))  # fmt: skip
    assert render([orphan]).splitlines() == [
        "trace 0af7651916cd43dd8448eb211c80319c svc 2.50 ms",
        "  CLIENT POST /x  2.50 ms  svc  |##############################|",
    ]


def test_parent_cycle_still_prints_every_span():
    a = Span(TRACE, sid(1), "a", SpanKind.SERVER, T0, T0 + 1000, FRONTEND, parent_span_id=sid(2))
    b = Span(TRACE, sid(2), "b", SpanKind.SERVER, T0 + 10, T0 + 900, FRONTEND, parent_span_id=sid(1))
    lines = render([a, b]).splitlines()
    assert len(lines) == 3 and "SERVER a" in lines[1] and "SERVER b" in lines[2]


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
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8")
    ConsolePrinter(stream).print_spans(three_span_tree())
    assert "|" + "\u2588" * 30 + "|" in raw.getvalue().decode()


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
    assert (
        stats.exported == 0
        and stats.dropped["export_failed"] == 3
        and "console output failed" in stats.last_error
    )


def test_https_spans_are_marked():
    spans = three_span_tree()
    spans[1].attributes["url.scheme"] = "https"
    spans[2].attributes["url.scheme"] = "http"
    assert render(spans).splitlines()[1:3] == [
        "  SERVER GET /users 200   10.00 ms  frontend  pid=100  |##############################|",
        "    CLIENT GET 200 https   5.00 ms  backend   pid=200  |      ###############         |",
    ]
    colored = render(spans, color=True)
    assert "https" in colored and colored.count("https") == 1
