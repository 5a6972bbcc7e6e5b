"""Table-driven and fuzz tests for the PostgreSQL v3 client-side parser.

Every fixture is written out byte by byte from the protocol's message formats, length fields included
(``test_fixture_framing`` checks that each declared length matches the bytes that follow it).
"""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otelbpf.protocols import sql
from otelbpf.protocols.db import POSTGRESQL, DbCall
from otelbpf.protocols.postgres import (
    CANCEL_REQUEST,
    GSSENC_REQUEST,
    MAX_MESSAGES,
    SSL_REQUEST,
    STARTUP,
    FrontendMessage,
    PgResponse,
    PgSession,
    looks_like_frontend,
    parse_backend,
    parse_frontend,
)

# -- frontend fixtures ---------------------------------------------------------------------------

SELECT_1 = "SELECT 1"
SELECT_USERS = "SELECT id, name FROM users"
SELECT_BY_ID = "SELECT name FROM users WHERE id = $1"
INSERT_USER = "INSERT INTO users (id, name) VALUES ($1, $2)"
UPDATE_USER = "UPDATE users SET name = $1 WHERE id = $2"

Q_SELECT_1 = b"Q\x00\x00\x00\x0dSELECT 1\x00"  # 4 + 8 + 1
Q_USERS = b"Q\x00\x00\x00\x1fSELECT id, name FROM users\x00"  # 4 + 26 + 1
Q_LITERAL = b"Q\x00\x00\x00\x32SELECT * FROM users WHERE name = 'secret-bob'\x00"  # 4 + 45 + 1
Q_EMPTY = b"Q\x00\x00\x00\x05\x00"

# Parse: unnamed statement, one parameter declared int4 (oid 23): 4 + 1 + 36 + 1 + 2 + 4 = 48.
P_SELECT = b"P\x00\x00\x00\x30\x00SELECT name FROM users WHERE id = $1\x00\x00\x01\x00\x00\x00\x17"
# Bind: unnamed portal and statement, no format codes, one text parameter "42", no result formats: 4 + 14.
B_42 = b"B\x00\x00\x00\x12\x00\x00\x00\x00\x00\x01\x00\x00\x00\x0242\x00\x00"
D_PORTAL = b"D\x00\x00\x00\x06P\x00"
E_ALL = b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00"
E_100 = b"E\x00\x00\x00\x09\x00\x00\x00\x00\x64"
SYNC = b"S\x00\x00\x00\x04"
FLUSH = b"H\x00\x00\x00\x04"
TERMINATE = b"X\x00\x00\x00\x04"
PASSWORD = b"p\x00\x00\x00\x0chunter2\x00"  # 4 + 7 + 1

# pgjdbc style: statement "S_1", no declared types: 4 + 4 + 36 + 1 + 2 = 47.
P_S1 = b"P\x00\x00\x00\x2fS_1\x00SELECT name FROM users WHERE id = $1\x00\x00\x00"
# Bind "S_1" to the unnamed portal, one binary int4 parameter 42: 4 + 1 + 4 + 4 + 2 + 8 + 2 = 25.
B_S1 = b"B\x00\x00\x00\x19\x00S_1\x00\x00\x01\x00\x01\x00\x01\x00\x00\x00\x04\x00\x00\x00\x2a\x00\x00"
CLOSE_S1 = b"C\x00\x00\x00\x09SS_1\x00"  # 4 + 'S' + "S_1\0"
CLOSE_PORTAL = b"C\x00\x00\x00\x06P\x00"

# Unnamed INSERT with two declared types (int4 23, varchar 1043 = 0x413): 4 + 1 + 44 + 1 + 2 + 8 = 60.
P_INSERT = (
    b"P\x00\x00\x00\x3c\x00INSERT INTO users (id, name) VALUES ($1, $2)\x00\x00\x02\x00\x00\x00\x17\x00\x00\x04\x13"
)
# Binds of two text parameters: 4 + 2 + 2 + 2 + (4 + 1) + (4 + n) + 2.
B_ALICE = b"B\x00\x00\x00\x1a\x00\x00\x00\x00\x00\x02\x00\x00\x00\x011\x00\x00\x00\x05alice\x00\x00"
B_BOB = b"B\x00\x00\x00\x18\x00\x00\x00\x00\x00\x02\x00\x00\x00\x012\x00\x00\x00\x03bob\x00\x00"
B_CAROL = b"B\x00\x00\x00\x1a\x00\x00\x00\x00\x00\x02\x00\x00\x00\x013\x00\x00\x00\x05carol\x00\x00"
P_UPDATE = b"P\x00\x00\x00\x30\x00UPDATE users SET name = $1 WHERE id = $2\x00\x00\x00"  # 4 + 1 + 40 + 1 + 2
B_DAVE = b"B\x00\x00\x00\x19\x00\x00\x00\x00\x00\x02\x00\x00\x00\x04dave\x00\x00\x00\x011\x00\x00"

EXTENDED = P_SELECT + B_42 + D_PORTAL + E_ALL + SYNC  # psycopg 3, one statement
EXECUTEMANY = P_INSERT + B_ALICE + E_ALL + B_BOB + E_ALL + B_CAROL + E_ALL + SYNC  # psycopg 3 pipeline
MIXED_PIPELINE = P_INSERT + B_ALICE + E_ALL + P_UPDATE + B_DAVE + E_ALL + SYNC

# StartupMessage 3.0: int32 length, int32 196608, key\0value\0 ... \0: 8 + 48.
STARTUP_SHOP = b"\x00\x00\x00\x38\x00\x03\x00\x00user\x00alice\x00database\x00shop\x00application_name\x00psql\x00\x00"
STARTUP_NO_DB = b"\x00\x00\x00\x14\x00\x03\x00\x00user\x00alice\x00\x00"  # 8 + 12
STARTUP_32 = b"\x00\x00\x00\x16\x00\x03\x00\x02database\x00inv\x00\x00"  # protocol 3.2: 8 + 14
SSL_REQ = b"\x00\x00\x00\x08\x04\xd2\x16\x2f"  # 80877103
GSSENC_REQ = b"\x00\x00\x00\x08\x04\xd2\x16\x30"  # 80877104
CANCEL_REQ = b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x30\x39\xde\xad\xbe\xef"  # 80877102, pid 12345, key

# -- backend fixtures ----------------------------------------------------------------------------

PARSE_COMPLETE = b"1\x00\x00\x00\x04"
BIND_COMPLETE = b"2\x00\x00\x00\x04"
CLOSE_COMPLETE = b"3\x00\x00\x00\x04"
# One text column "name" (table oid 0x4001, attnum 2, type 25, typlen -1, typmod -1, text format): 4 + 25.
ROW_DESC = b"T\x00\x00\x00\x1d\x00\x01name\x00\x00\x00\x40\x01\x00\x02\x00\x00\x00\x19\xff\xff\xff\xff\xff\xff\x00\x00"
DATA_ROW = b"D\x00\x00\x00\x0f\x00\x01\x00\x00\x00\x05alice"  # 4 + 2 + 4 + 5
CC_SELECT_1 = b"C\x00\x00\x00\x0dSELECT 1\x00"
CC_INSERT = b"C\x00\x00\x00\x0fINSERT 0 1\x00"
CC_UPDATE = b"C\x00\x00\x00\x0dUPDATE 1\x00"
RFQ_IDLE = b"Z\x00\x00\x00\x05I"
RFQ_FAILED = b"Z\x00\x00\x00\x05E"
ERROR_42P01 = (
    b"E\x00\x00\x00\x6a"  # 4 + 102
    b'SERROR\x00VERROR\x00C42P01\x00Mrelation "missing" does not exist\x00'
    b"P15\x00Fparse_relation.c\x00L1392\x00RparserOpenTable\x00\x00"
)
# An old server's error: localized severity only, no 'V': 4 + 27.
ERROR_FATAL = b"E\x00\x00\x00\x1fSFATAL\x00C3D000\x00Mno such db\x00\x00"
NOTICE = b"N\x00\x00\x00\x2bSWARNING\x00VWARNING\x00C01000\x00Mtest notice\x00\x00"  # 4 + 39
AUTH_OK = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
PARAM_STATUS = b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00"  # 4 + 16 + 5
BACKEND_KEY = b"K\x00\x00\x00\x0c\x00\x00\x30\x39\xde\xad\xbe\xef"

SELECT_RESP = PARSE_COMPLETE + BIND_COMPLETE + ROW_DESC + DATA_ROW + CC_SELECT_1 + RFQ_IDLE
EXECUTEMANY_RESP = PARSE_COMPLETE + (BIND_COMPLETE + CC_INSERT) * 3 + RFQ_IDLE
STARTUP_RESP = AUTH_OK + PARAM_STATUS + BACKEND_KEY + RFQ_IDLE

TYPED_FIXTURES = [
    Q_SELECT_1,
    Q_USERS,
    Q_LITERAL,
    Q_EMPTY,
    P_SELECT,
    B_42,
    D_PORTAL,
    E_ALL,
    E_100,
    SYNC,
    FLUSH,
    TERMINATE,
    PASSWORD,
    P_S1,
    B_S1,
    CLOSE_S1,
    CLOSE_PORTAL,
    P_INSERT,
    B_ALICE,
    B_BOB,
    B_CAROL,
    P_UPDATE,
    B_DAVE,
    PARSE_COMPLETE,
    BIND_COMPLETE,
    CLOSE_COMPLETE,
    ROW_DESC,
    DATA_ROW,
    CC_SELECT_1,
    CC_INSERT,
    CC_UPDATE,
    RFQ_IDLE,
    RFQ_FAILED,
    ERROR_42P01,
    ERROR_FATAL,
    NOTICE,
    AUTH_OK,
    PARAM_STATUS,
    BACKEND_KEY,
]
UNTYPED_FIXTURES = [STARTUP_SHOP, STARTUP_NO_DB, STARTUP_32, SSL_REQ, GSSENC_REQ, CANCEL_REQ]


@pytest.mark.parametrize("msg", TYPED_FIXTURES)
def test_fixture_framing(msg: bytes) -> None:
    """Each hand-built typed message is exactly 1 type byte + its declared length."""
    assert struct.unpack(">I", msg[1:5])[0] == len(msg) - 1


@pytest.mark.parametrize("msg", UNTYPED_FIXTURES)
def test_untyped_fixture_framing(msg: bytes) -> None:
    assert struct.unpack(">I", msg[:4])[0] == len(msg)


# -- parse_frontend ------------------------------------------------------------------------------

M = FrontendMessage


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        pytest.param(Q_SELECT_1, [M("Q", query="SELECT 1")], id="query"),
        pytest.param(Q_EMPTY, [M("Q", query="")], id="empty-query"),
        pytest.param(
            EXTENDED,
            [M("P", query=SELECT_BY_ID), M("B"), M("D", target="P"), M("E"), M("S")],
            id="extended",
        ),
        pytest.param(
            P_S1 + B_S1 + E_100 + FLUSH,
            [M("P", name="S_1", query=SELECT_BY_ID), M("B", statement="S_1"), M("E", max_rows=100), M("H")],
            id="named-flush",
        ),
        pytest.param(
            CLOSE_S1 + CLOSE_PORTAL + SYNC, [M("C", target="S", name="S_1"), M("C", target="P"), M("S")], id="close"
        ),
        pytest.param(PASSWORD, [M("p")], id="password-not-kept"),
        pytest.param(TERMINATE, [M("X")], id="terminate"),
        pytest.param(
            STARTUP_SHOP,
            [M(STARTUP, params={"user": "alice", "database": "shop", "application_name": "psql"})],
            id="startup",
        ),
        pytest.param(STARTUP_32, [M(STARTUP, params={"database": "inv"})], id="startup-3.2"),
        pytest.param(SSL_REQ, [M(SSL_REQUEST)], id="ssl"),
        pytest.param(GSSENC_REQ, [M(GSSENC_REQUEST)], id="gssenc"),
        pytest.param(CANCEL_REQ, [M(CANCEL_REQUEST)], id="cancel"),
        # Cut inside the query text: the text so far, marked.
        pytest.param(P_SELECT[:20], [M("P", query="SELECT name FR", truncated=True)], id="cut-in-query"),
        # Cut inside the statement name: the name is unknown, so is the text.
        pytest.param(P_S1[:7], [M("P", name=None, truncated=True)], id="cut-in-name"),
        # Cut inside the next message's header: its type is known, nothing else.
        pytest.param(
            P_SELECT + B_42[:3],
            [M("P", query=SELECT_BY_ID), M("B", name=None, statement=None, truncated=True)],
            id="cut-in-header",
        ),
        pytest.param(
            P_S1 + B_S1[:8],
            [M("P", name="S_1", query=SELECT_BY_ID), M("B", statement=None, truncated=True)],
            id="cut-in-bind-statement",
        ),
        pytest.param(
            STARTUP_SHOP[:34],
            [M(STARTUP, params={"user": "alice", "database": "shop"}, truncated=True)],
            id="cut-startup",
        ),
        # Garbage after valid messages ends the parse; garbage first yields nothing.
        pytest.param(SYNC + b"GET / HTTP/1.1\r\n", [M("S")], id="garbage-after"),
        pytest.param(b"GET / HTTP/1.1\r\n", [], id="http"),
        pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", [], id="tls-client-hello"),
        pytest.param(b"S\x00\x00\x00\x05\x00", [], id="sync-with-body"),
        pytest.param(b"Q\x00\x00\x00\x03", [], id="length-below-minimum"),
        pytest.param(b"\x00\x00\x00\x08\x00\x02\x00\x00", [], id="protocol-2"),
        pytest.param(b"", [], id="empty"),
    ],
)
def test_parse_frontend(req: bytes, expected: list[FrontendMessage]) -> None:
    assert parse_frontend(req) == expected


def test_parse_frontend_keeps_no_secrets() -> None:
    text = repr(parse_frontend(PASSWORD + B_ALICE + B_S1)) + repr(parse_frontend(CANCEL_REQ))
    for secret in ("hunter2", "alice", "12345", "deadbeef"):
        assert secret not in text


def test_parse_frontend_is_bounded() -> None:
    assert len(parse_frontend(SYNC * 1000)) == MAX_MESSAGES


def test_cut_multibyte_character_is_dropped() -> None:
    text = "SELECT 'héllo'".encode()
    req = b"Q" + struct.pack(">I", 4 + len(text) + 1) + text + b"\x00"
    assert parse_frontend(req[: 5 + text.index(b"\xc3") + 1]) == [M("Q", query="SELECT 'h", truncated=True)]


# -- parse_backend -------------------------------------------------------------------------------

R = PgResponse


@pytest.mark.parametrize(
    ("resp", "expected"),
    [
        pytest.param(
            SELECT_RESP, R(command_tags=["SELECT 1"], ready_for_query=True, transaction_status="I"), id="select"
        ),
        pytest.param(
            EXECUTEMANY_RESP,
            R(command_tags=["INSERT 0 1"] * 3, ready_for_query=True, transaction_status="I"),
            id="executemany",
        ),
        pytest.param(
            PARSE_COMPLETE + ERROR_42P01 + RFQ_IDLE,
            R(
                error_code="42P01",
                error_message='relation "missing" does not exist',
                error_severity="ERROR",
                has_error=True,
                ready_for_query=True,
                transaction_status="I",
            ),
            id="error",
        ),
        pytest.param(
            ERROR_FATAL,
            R(error_code="3D000", error_message="no such db", error_severity="FATAL", has_error=True),
            id="error-severity-s",
        ),
        # Only the first error counts.
        pytest.param(
            ERROR_FATAL + ERROR_42P01,
            R(error_code="3D000", error_message="no such db", error_severity="FATAL", has_error=True),
            id="first-error",
        ),
        pytest.param(
            NOTICE + CC_UPDATE + RFQ_FAILED,
            R(command_tags=["UPDATE 1"], ready_for_query=True, transaction_status="E"),
            id="notice-is-not-error",
        ),
        pytest.param(STARTUP_RESP, R(ready_for_query=True, transaction_status="I"), id="startup"),
        pytest.param(b"S", R(ssl_answer="S"), id="ssl-yes"),
        pytest.param(b"N", R(ssl_answer="N"), id="ssl-no"),
        pytest.param(b"G", R(ssl_answer="G"), id="gssenc-yes"),
        # Cut inside the error after the SQLSTATE: code kept, message partial.
        pytest.param(
            ERROR_42P01[:35],
            R(error_code="42P01", error_message="relation", error_severity="ERROR", has_error=True, truncated=True),
            id="cut-error-message",
        ),
        # Cut inside the SQLSTATE: an error, but no code.
        pytest.param(ERROR_42P01[:24], R(error_severity="ERROR", has_error=True, truncated=True), id="cut-error-code"),
        # Cut inside a tag: the partial tag is not reported.
        pytest.param(DATA_ROW + CC_INSERT[:9], R(truncated=True), id="cut-tag"),
        pytest.param(DATA_ROW + CC_INSERT[:3], R(truncated=True), id="cut-header"),
        pytest.param(b"HTTP/1.1 200 OK\r\n", R(), id="http"),
        pytest.param(b"", R(), id="empty"),
    ],
)
def test_parse_backend(resp: bytes, expected: PgResponse) -> None:
    assert parse_backend(resp) == expected


def test_parse_backend_rejects_malformed_sqlstate() -> None:
    bad = b"E\x00\x00\x00\x13SERROR\x00C4\xff!ab\x00\x00"  # 4 + 15
    assert parse_backend(bad) == R(error_severity="ERROR", has_error=True)


# -- looks_like_frontend -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        (Q_SELECT_1, True),
        (EXTENDED, True),
        (P_SELECT[:5], True),
        (B_S1, True),
        (SYNC, True),
        (TERMINATE, True),
        (PASSWORD, True),
        (CLOSE_S1, True),
        (STARTUP_SHOP, True),
        (STARTUP_SHOP[:8], True),
        (SSL_REQ, True),
        (GSSENC_REQ, True),
        (CANCEL_REQ, True),
        (b"S\x00\x00\x00\x05", False),  # Sync has no body
        (b"E\x00\x00\x00\x05\x00", False),  # shorter than portal\0 + int32
        (b"Q\x01\x00\x00\x01", False),  # 16 MiB + 1
        (b"d\x00\x00\x00\x08abcd", False),  # CopyData never starts a request
        (b"GET / HTTP/1.1\r\n", False),
        (b"POST /x HTTP/1.1\r\n", False),
        (b"DELETE /x HTTP/1.1\r\n", False),
        (b"HEAD / HTTP/1.1\r\n", False),
        (b"PING\r\n", False),
        (b"*1\r\n$4\r\nPING\r\n", False),  # Redis
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc", False),  # TLS ClientHello
        (b"\x21\x00\x00\x00\x03select 1", False),  # MySQL COM_QUERY
        (b"\x00\x00\x00\x08\x04\xd2\x16\x2f"[:7], False),
        (b"\x00\x00\x00\x09\x04\xd2\x16\x2f\x00", False),  # SSLRequest is exactly 8 bytes
        (b"\x00\x00\x00\x08\x00\x02\x00\x00", False),
        (b"\x00\x01\x00\x00\x00\x03\x00\x00", False),  # startup longer than the server accepts
        (b"", False),
        (b"Q", False),
    ],
)
def test_looks_like_frontend(req: bytes, expected: bool) -> None:
    assert looks_like_frontend(req) is expected


# -- PgSession.describe --------------------------------------------------------------------------


def pg(**kw: object) -> DbCall:
    return DbCall(system=POSTGRESQL, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("req", "resp", "hint", "expected"),
    [
        pytest.param(
            Q_USERS,
            CC_SELECT_1 + RFQ_IDLE,
            1,
            pg(operation="SELECT", collection="users", query_text=SELECT_USERS),
            id="simple-query",
        ),
        pytest.param(
            EXTENDED,
            SELECT_RESP,
            1,
            pg(operation="SELECT", collection="users", query_text=sql.sanitize(SELECT_BY_ID)),
            id="extended",
        ),
        pytest.param(
            Q_USERS,
            ERROR_42P01 + RFQ_IDLE,
            0,
            pg(
                operation="SELECT",
                collection="users",
                query_text=SELECT_USERS,
                status_code="42P01",
                error_message='relation "missing" does not exist',
            ),
            id="error",
        ),
        pytest.param(
            EXECUTEMANY,
            EXECUTEMANY_RESP,
            3,
            pg(operation="BATCH INSERT", collection="users", query_text=sql.sanitize(INSERT_USER), batch_size=3),
            id="executemany",
        ),
        pytest.param(
            MIXED_PIPELINE,
            b"",
            2,
            pg(
                operation="BATCH",
                query_text=sql.sanitize(INSERT_USER) + "; " + sql.sanitize(UPDATE_USER),
                collection="users",
                batch_size=2,
            ),
            id="mixed-pipeline",
        ),
        # The capture ends inside the second Bind; the kernel counted three Executes.
        pytest.param(
            EXECUTEMANY[: len(P_INSERT + B_ALICE + E_ALL) + 10],
            b"",
            3,
            pg(
                operation="BATCH INSERT",
                collection="users",
                query_text=sql.sanitize(INSERT_USER),
                batch_size=3,
                truncated=True,
            ),
            id="truncated-batch",
        ),
        # The capture ends inside the third Execute's header: it runs the portal bound just before.
        pytest.param(
            EXECUTEMANY[: len(EXECUTEMANY) - len(SYNC) - 7],
            b"",
            3,
            pg(
                operation="BATCH INSERT",
                collection="users",
                query_text=sql.sanitize(INSERT_USER),
                batch_size=3,
                truncated=True,
            ),
            id="cut-in-execute",
        ),
        pytest.param(
            P_SELECT + B_42 + E_ALL[:3],
            b"",
            1,
            pg(operation="SELECT", collection="users", query_text=sql.sanitize(SELECT_BY_ID), truncated=True),
            id="cut-in-single-execute",
        ),
        # The capture ends at a message boundary, but the kernel counted more Executes than it holds.
        pytest.param(
            P_INSERT + B_ALICE + E_ALL,
            b"",
            5,
            pg(
                operation="BATCH INSERT",
                collection="users",
                query_text=sql.sanitize(INSERT_USER),
                batch_size=5,
                truncated=True,
            ),
            id="boundary-cut-batch",
        ),
        # The capture ends inside the Parse: the statement's Execute was never seen.
        pytest.param(
            P_SELECT[:28],
            b"",
            1,
            pg(
                operation="SELECT",
                collection="users",
                query_text=sql.sanitize("SELECT name FROM users"),
                truncated=True,
            ),
            id="cut-in-parse",
        ),
        # Execute of a portal bound from a statement prepared before tracing started.
        pytest.param(B_S1 + E_ALL + SYNC, b"", 1, pg(), id="unknown-statement"),
        pytest.param(Q_EMPTY, b"I\x00\x00\x00\x04" + RFQ_IDLE, 1, pg(), id="empty-query"),
        # Prepare-only round trips carry no operation, unless the Parse failed.
        pytest.param(P_S1 + D_PORTAL + SYNC, PARSE_COMPLETE + RFQ_IDLE, 0, None, id="prepare-only"),
        pytest.param(
            P_S1 + SYNC,
            ERROR_42P01 + RFQ_IDLE,
            0,
            pg(
                operation="SELECT",
                collection="users",
                query_text=sql.sanitize(SELECT_BY_ID),
                status_code="42P01",
                error_message='relation "missing" does not exist',
            ),
            id="prepare-failed",
        ),
        pytest.param(SYNC, RFQ_IDLE, 0, None, id="lone-sync"),
        pytest.param(SYNC, RFQ_IDLE, 1, None, id="lone-sync-miscounted"),
        pytest.param(PASSWORD, AUTH_OK, 0, None, id="password"),
        pytest.param(TERMINATE, b"", 0, None, id="terminate"),
        pytest.param(SSL_REQ, b"N", 0, None, id="ssl"),
        pytest.param(CANCEL_REQ, b"", 0, None, id="cancel"),
        pytest.param(CLOSE_S1 + SYNC, CLOSE_COMPLETE + RFQ_IDLE, 0, None, id="close"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n", 1, None, id="http"),
    ],
)
def test_describe(req: bytes, resp: bytes, hint: int, expected: DbCall | None) -> None:
    session = PgSession()
    assert session.describe(req, resp, hint) == expected
    assert session.failures == 0


def test_startup_sets_namespace_for_later_calls() -> None:
    session = PgSession()
    assert session.describe(Q_SELECT_1, CC_SELECT_1).namespace is None  # type: ignore[union-attr]
    assert session.describe(SSL_REQ, b"N") is None
    assert session.describe(STARTUP_SHOP, STARTUP_RESP) is None
    assert session.namespace == "shop"
    expected = pg(operation="SELECT", collection="users", query_text=SELECT_USERS, namespace="shop")
    assert session.describe(Q_USERS, CC_SELECT_1) == expected


@pytest.mark.parametrize(("startup", "namespace"), [(STARTUP_NO_DB, "alice"), (STARTUP_32, "inv")])
def test_startup_namespace_defaults(startup: bytes, namespace: str) -> None:
    session = PgSession()
    assert session.describe(startup, AUTH_OK) is None
    assert session.namespace == namespace


def test_named_statement_is_remembered_until_closed() -> None:
    session = PgSession()
    select = pg(operation="SELECT", collection="users", query_text=sql.sanitize(SELECT_BY_ID))
    # pgjdbc after prepareThreshold: Parse "S_1" once, then only Bind/Execute.
    assert session.describe(P_S1 + B_S1 + E_ALL + SYNC, SELECT_RESP, 1) == select
    assert session.describe(B_S1 + E_ALL + SYNC, SELECT_RESP[5:], 1) == select
    assert session.describe(B_S1 + E_ALL + SYNC, SELECT_RESP[5:], 1) == select
    assert session.describe(CLOSE_S1 + SYNC, CLOSE_COMPLETE + RFQ_IDLE) is None
    assert session.describe(B_S1 + E_ALL + SYNC, b"", 1) == pg()


def test_unnamed_statement_and_portal_are_remembered() -> None:
    session = PgSession()
    assert session.describe(P_INSERT + SYNC, PARSE_COMPLETE + RFQ_IDLE) is None
    insert = pg(operation="INSERT", collection="users", query_text=sql.sanitize(INSERT_USER))
    assert session.describe(B_ALICE + E_ALL + SYNC, BIND_COMPLETE + CC_INSERT + RFQ_IDLE, 1) == insert
    # A further Execute of the open unnamed portal (fetching more rows) still knows its statement.
    assert session.describe(E_100 + SYNC, b"", 1) == insert
    assert session.describe(CLOSE_PORTAL + SYNC, CLOSE_COMPLETE) is None
    assert session.describe(E_100 + SYNC, b"", 1) == pg()


def test_closing_a_statement_closes_its_portals() -> None:
    session = PgSession()
    session.describe(P_S1 + B_S1 + SYNC, b"")
    assert session.describe(CLOSE_S1 + SYNC, b"") is None
    assert session.describe(E_ALL + SYNC, b"", 1) == pg()


def test_statement_table_is_bounded_lru() -> None:
    session = PgSession(max_statements=2)
    texts = {}
    for i in range(1, 4):
        text = f"SELECT c{i} FROM t{i}"
        name = f"s{i}".encode()
        parse = b"P" + struct.pack(">I", 4 + len(name) + 1 + len(text) + 1 + 2) + name + b"\0" + text.encode()
        parse += b"\0\0\0"
        assert struct.unpack(">I", parse[1:5])[0] == len(parse) - 1
        session.describe(parse + SYNC, b"")
        texts[name] = text
        if i == 2:
            session.describe(_bind(b"s1") + E_ALL + SYNC, b"", 1)  # touch s1: s2 becomes the oldest
    assert session.evicted == 1
    assert session.describe(_bind(b"s2") + E_ALL + SYNC, b"", 1) == pg()
    for name in (b"s1", b"s3"):
        call = session.describe(_bind(name) + E_ALL + SYNC, b"", 1)
        assert call is not None and call.query_text == sql.sanitize(texts[name])


def _bind(statement: bytes) -> bytes:
    """Bind ``statement`` to the unnamed portal with no parameters: 4 + 1 + len + 1 + 2 + 2 + 2."""
    return b"B" + struct.pack(">I", 4 + 1 + len(statement) + 1 + 6) + b"\0" + statement + b"\0" + b"\0" * 6


def test_literals_never_reach_query_text() -> None:
    session = PgSession()
    call = session.describe(Q_LITERAL, CC_SELECT_1 + RFQ_IDLE, 1)
    assert call is not None and call.operation == "SELECT" and call.collection == "users"
    assert call.query_text and "secret" not in call.query_text
    # Cut in the middle of the literal.
    call = session.describe(Q_LITERAL[:-6], b"", 1)
    assert call is not None and call.truncated
    assert call.query_text and "secret" not in call.query_text
    # Bind parameter values are never read.
    call = session.describe(EXECUTEMANY, EXECUTEMANY_RESP, 3)
    assert call is not None and not any(v in repr(call) for v in ("alice", "bob", "carol"))


def test_capture_raw_keeps_literals() -> None:
    call = PgSession(capture_raw=True).describe(Q_LITERAL, CC_SELECT_1, 1)
    assert call is not None and call.query_text == "SELECT * FROM users WHERE name = 'secret-bob'"


def test_batch_text_is_bounded() -> None:
    parts = []
    for i in range(12):
        text = f"SELECT c FROM table_with_a_rather_long_name_number_{i:02d} WHERE k = $1 AND j = $2 AND z = $3"
        name = f"q{i}".encode()
        parse = b"P" + struct.pack(">I", 4 + len(name) + 1 + len(text) + 1 + 2) + name + b"\0" + text.encode()
        parts.append(parse + b"\0\0\0")
    session = PgSession(capture_raw=True)
    for p in parts:
        session.describe(p + SYNC, b"")
    req = b"".join(_bind(f"q{i}".encode()) + E_ALL for i in range(12)) + SYNC
    call = session.describe(req, b"", 12)
    assert call is not None and call.batch_size == 12 and not call.truncated
    assert call.query_text is not None and len(call.query_text) <= 1024
    assert call.query_text.count("; ") == len(call.query_text.split("; ")) - 1 >= 5
    assert call.query_text.split("; ")[0] == parts[0][8:-3].decode()


# -- fuzz ----------------------------------------------------------------------------------------

REQUESTS = [EXTENDED, EXECUTEMANY, MIXED_PIPELINE, P_S1 + B_S1 + E_100 + FLUSH, CLOSE_S1 + SYNC, Q_LITERAL]
REQUESTS += UNTYPED_FIXTURES + [PASSWORD, TERMINATE, B_S1 + E_ALL + SYNC, CLOSE_PORTAL + SYNC]
RESPONSES = [SELECT_RESP, EXECUTEMANY_RESP, PARSE_COMPLETE + ERROR_42P01 + RFQ_IDLE, STARTUP_RESP, NOTICE, b"S"]

FUZZ = settings(max_examples=10_000, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def mutated(rng: random.Random, pool: list[bytes]) -> bytes:
    """A real capture, cut, with bytes overwritten or inserted, or glued to another one."""
    data = bytearray(rng.choice(pool))
    for _ in range(rng.randrange(4)):
        op = rng.randrange(4)
        at = rng.randrange(len(data) + 1)
        if op == 0:
            del data[at:]
        elif op == 1 and at < len(data):
            data[at] = rng.randrange(256)
        elif op == 2:
            data[at:at] = rng.randbytes(rng.randrange(9))
        else:
            data += rng.choice(pool + TYPED_FIXTURES)
    return bytes(data)


def _exercise(session: PgSession, req: bytes, resp: bytes, hint: int) -> None:
    msgs = parse_frontend(req)
    assert len(msgs) <= MAX_MESSAGES
    assert not any(m.truncated for m in msgs[:-1])
    parse_backend(resp)
    parse_backend(req)
    looks_like_frontend(req)
    call = session.describe(req, resp, hint)
    assert session.failures == 0
    assert call is None or call.batch_size == 0 or call.batch_size >= 2
    assert len(session._statements) <= session.max_statements >= len(session._portals)


@FUZZ
@given(data=st.binary(max_size=900))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    """One draw split into hint, request and response (a third cheaper than three draws)."""
    hint = data[0] % 22 - 1 if data else 0
    cut = 2 + (data[1] * 3 if len(data) > 1 else 0)
    _exercise(PgSession(max_statements=2), data[2:cut], data[cut:], hint)
    _exercise(PgSession(max_statements=2), data, b"", hint)


@FUZZ
@given(seed=st.integers(0, 2**64), raw=st.booleans())
def test_fuzz_mutated_messages(seed: int, raw: bool) -> None:
    """Three mutated records through one small session (a seed drives the mutations: cheaper than draws)."""
    rng = random.Random(seed)
    session = PgSession(max_statements=2, capture_raw=raw)
    for _ in range(3):
        _exercise(session, mutated(rng, REQUESTS), mutated(rng, RESPONSES), rng.randrange(6))
