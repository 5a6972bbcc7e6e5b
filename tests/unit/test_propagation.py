"""W3C traceparent/tracestate parsing: what continues a caller's trace and what restarts it."""

from __future__ import annotations

import pytest

from otelbpf.propagation import TraceParent, parse_traceparent, valid_tracestate

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


def test_valid_header() -> None:
    assert parse_traceparent(VALID, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7") == TraceParent(
        trace_id=bytes.fromhex(TRACE),
        span_id=bytes.fromhex(SPAN),
        sampled=True,
        trace_state="congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
    )


def test_not_sampled_flag_and_surrounding_blanks() -> None:
    parent = parse_traceparent(f"  00-{TRACE}-{SPAN}-00 ")
    assert parent is not None and parent.sampled is False and parent.trace_state == ""


def test_later_version_reads_the_first_four_fields() -> None:
    parent = parse_traceparent(f"cc-{TRACE}-{SPAN}-01-what-the-future-adds")
    assert parent is not None and parent.span_id == bytes.fromhex(SPAN)
    assert parse_traceparent(f"cc-{TRACE}-{SPAN}-01") is not None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"cc-{TRACE}-{SPAN}-01x",  # a later version's extra part starts with "-"
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE.upper()}-{SPAN}-01",  # hex is lowercase
        f"00-{TRACE[:-1]}-{SPAN}-01",  # short trace id (a capture cut mid-header looks like this)
        f"00_{TRACE}_{SPAN}_01",
        f"0g-{TRACE}-{SPAN}-01",
        f"00-{TRACE}-{SPAN}-0z",
    ],
)
def test_invalid_headers_restart_the_trace(value: str | None) -> None:
    assert parse_traceparent(value, "a=b") is None


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("rojo=00f067aa0ba902b7", "rojo=00f067aa0ba902b7"),
        (" a=1 , b@vendor=2,", "a=1,b@vendor=2"),  # blanks around members and empty members dropped
        ("a=1,a=2", ""),  # a key may appear once
        ("A=1", ""),  # keys are lowercase
        ("a=", ""),
        ("=1", ""),
        ("a=1 2", ""),  # no blank inside a value
        (",".join(f"k{i}=v" for i in range(33)), ""),  # more than 32 members
        ("k=" + "v" * 256, "k=" + "v" * 256),
        ("k=" + "v" * 257, ""),
        (",".join(f"k{i}={'v' * 60}" for i in range(9)), ""),  # over 512 characters in all
        (None, ""),
    ],
)
def test_tracestate(value: str | None, kept: str) -> None:
    assert valid_tracestate(value) == kept
