"""Database records -> spans (protocols/db.py): names, attributes, errors and the per-connection parsers."""

from __future__ import annotations

import socket
import struct

import pytest

from otelbpf import events
from otelbpf.clock import ClockMap
from otelbpf.correlate import SpanBuilder
from otelbpf.protocols.base import BuildStats, Endpoints
from otelbpf.protocols.db import DbCall, DbSpans, redact_message, span_name
from otelbpf.protocols.postgres import PgSession
from otelbpf.resources import ResourceCache
from otelbpf.spans import SpanKind, StatusCode
from tests.factories import http_event, v4


def pg_query(text: str) -> bytes:
    body = text.encode() + b"\0"
    return b"Q" + struct.pack(">I", 4 + len(body)) + body


def pg_error(sqlstate: str, message: str) -> bytes:
    fields = b"SERROR\0" + b"C" + sqlstate.encode() + b"\0" + b"M" + message.encode() + b"\0\0"
    return b"E" + struct.pack(">I", 4 + len(fields)) + fields + b"Z\0\0\0\x05I"


READY = b"C\0\0\0\x0dSELECT 1\0Z\0\0\0\x05I"


def pg_event(req: bytes, resp: bytes = READY, **kw: object) -> events.RequestEvent:
    fields: dict[str, object] = dict(
        protocol=events.PROTO_POSTGRES,
        role=events.ROLE_CLIENT,
        local_addr=v4("127.0.0.1"),
        peer_addr=v4("127.0.0.1"),
        local_port=40000,
        peer_port=5432,
        status=0,
        req=req,
        resp=resp,
    )
    fields.update(kw)
    return http_event(**fields)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (DbCall("postgresql", "SELECT", "items"), "SELECT items"),
        (DbCall("postgresql", "BEGIN"), "BEGIN"),
        (DbCall("redis"), "redis"),
    ],
)
def test_span_name(call: DbCall, name: str) -> None:
    assert span_name(call) == name


def test_redact_message_hides_quoted_values() -> None:
    text = 'invalid input syntax for type integer: "s3cret"'
    assert redact_message(text) == "invalid input syntax for type integer: ?"
    assert redact_message("Duplicate entry 'alice@example.com' for key 'email'") == "Duplicate entry ? for key ?"
    assert len(redact_message("x" * 10_000)) == 256


def test_a_query_becomes_a_client_span_without_its_literals() -> None:
    spans = DbSpans(BuildStats(), PgSession)
    ev = pg_event(pg_query("SELECT name FROM items WHERE id = 4242"))
    op = spans.describe(ev, Endpoints("127.0.0.1", "127.0.0.1"))
    assert op is not None
    assert op.name == "SELECT items"
    assert op.kind is SpanKind.CLIENT
    assert op.status is StatusCode.UNSET
    assert op.attributes == {
        "db.system.name": "postgresql",
        "db.operation.name": "SELECT",
        "db.collection.name": "items",
        "db.query.text": "SELECT name FROM items WHERE id = ?",
        "db.query.summary": "SELECT items",
        "server.address": "127.0.0.1",
        "server.port": 5432,
    }


def test_raw_query_text_only_when_asked() -> None:
    raw = DbSpans(BuildStats(), lambda: PgSession(capture_raw=True), capture_raw=True)
    op = raw.describe(pg_event(pg_query("SELECT 4242")), Endpoints("127.0.0.1", "127.0.0.1"))
    assert op is not None and op.attributes["db.query.text"] == "SELECT 4242"


def test_an_error_reply_is_an_error_span_with_the_sqlstate() -> None:
    spans = DbSpans(BuildStats(), PgSession)
    ev = pg_event(pg_query("SELECT * FROM nope"), pg_error("42P01", 'relation "nope" does not exist'))
    op = spans.describe(ev, Endpoints("127.0.0.1", "127.0.0.1"))
    assert op is not None
    assert op.status is StatusCode.ERROR
    assert op.status_message == "relation ? does not exist"
    assert op.attributes["db.response.status_code"] == "42P01"
    assert op.attributes["error.type"] == "42P01"


def test_a_closed_connection_is_an_error() -> None:
    spans = DbSpans(BuildStats(), PgSession)
    op = spans.describe(pg_event(pg_query("SELECT 1"), b"", end=events.END_NO_RESPONSE), Endpoints(None, None))
    assert op is not None and op.status is StatusCode.ERROR
    assert op.attributes["error.type"] == "connection_closed"


def test_startup_names_the_database_for_later_calls_on_that_connection_only() -> None:
    spans = DbSpans(BuildStats(), PgSession)
    params = b"user\0app\0database\0shop\0\0"
    startup = struct.pack(">II", 8 + len(params), 196608) + params
    assert spans.describe(pg_event(startup, b"R\0\0\0\x08\0\0\0\0" + b"Z\0\0\0\x05I"), Endpoints(None, None)) is None
    op = spans.describe(pg_event(pg_query("SELECT 1")), Endpoints(None, None))
    assert op is not None and op.attributes["db.namespace"] == "shop"
    other = spans.describe(pg_event(pg_query("SELECT 1"), sock_id=7, local_port=40001), Endpoints(None, None))
    assert other is not None and "db.namespace" not in other.attributes


def test_connections_are_bounded_and_evictions_counted() -> None:
    spans = DbSpans(BuildStats(), PgSession, max_connections=3)
    for port in range(10):
        spans.describe(pg_event(pg_query("SELECT 1"), local_port=41000 + port), Endpoints(None, None))
    assert spans.evicted == 7


def test_server_side_records_make_no_span() -> None:
    spans = DbSpans(BuildStats(), PgSession)
    assert spans.describe(pg_event(pg_query("SELECT 1"), role=events.ROLE_SERVER), Endpoints(None, None)) is None


def test_the_span_builder_dispatches_on_the_protocol_and_counts_records_without_spans() -> None:
    builder = SpanBuilder(ResourceCache({}), ClockMap())
    span = builder.build(pg_event(pg_query("SELECT 1"), family=socket.AF_INET))
    assert span is not None and span.attributes["db.system.name"] == "postgresql"
    assert span.attributes["network.peer.port"] == 5432
    assert builder.build(pg_event(struct.pack(">II", 8, 80877103), b"N")) is None
    assert builder.stats.no_span == 1
