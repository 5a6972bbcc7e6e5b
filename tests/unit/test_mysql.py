"""Table-driven and fuzz tests for the MySQL / MariaDB client protocol parser.

Every vector is written out byte by byte from the protocol spec (int<3> payload length, int<1> sequence id,
payload); ``test_vector_lengths_match_payloads`` checks the hand-written length fields.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otelbpf.protocols import db
from otelbpf.protocols.mysql import (
    COM_PING,
    COM_QUERY,
    COM_STMT_EXECUTE,
    COM_STMT_PREPARE,
    MySqlCommand,
    MySqlResponse,
    MySqlSession,
    looks_like_command,
    parse_command,
    parse_response,
)

# --- client packets ---------------------------------------------------------------------------------------

Q_SELECT_1 = b"\x09\x00\x00\x00\x03SELECT 1"
Q_SELECT_USERS = b"\x1b\x00\x00\x00\x03SELECT id, name FROM users"  # 1 + 26
Q_SECRET = b"\x2b\x00\x00\x00\x03SELECT * FROM users WHERE email = 'a@b.io'"  # 1 + 42
Q_INSERT = b"\x28\x00\x00\x00\x03INSERT INTO orders (id) VALUES (424242)"  # 1 + 39
Q_USE = b"\x0c\x00\x00\x00\x03USE `audit`"  # 1 + 11
# MySQL 8.0.23+ with CLIENT_QUERY_ATTRIBUTES: parameter_count 0, parameter_set_count 1, then the text.
Q_ATTRS_NONE = b"\x0b\x00\x00\x00\x03\x00\x01SELECT 1"
# One attribute: count 1, set 1, null bitmap 00, bind flag 01, type fe 00, name "tp", value "00-ab", text.
Q_ATTRS_ONE = b"\x18\x00\x00\x00\x03\x01\x01\x00\x01\xfe\x00\x02tp\x0500-abSELECT 1"
# Same with a NULL attribute (bitmap bit 0 set: the value takes no bytes) of type LONGLONG.
Q_ATTRS_NULL = b"\x12\x00\x00\x00\x03\x01\x01\x01\x01\x08\x00\x02tpSELECT 1"
Q_EMPTY = b"\x01\x00\x00\x00\x03"

PREPARE_USERS = b"\x21\x00\x00\x00\x16SELECT * FROM users WHERE id = ?"  # 1 + 32
PREPARE_INSERT = b"\x29\x00\x00\x00\x16INSERT INTO orders (id, n) VALUES (?, ?)"  # 1 + 40
# COM_STMT_EXECUTE stmt 1: flags 00, iterations 1, null bitmap 00, new-params-bound 01, type LONGLONG,
# value 42 (8 bytes) -- the value must never surface anywhere.
EXEC_1 = b"\x16\x00\x00\x00\x17\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\x08\x00\x2a\x00\x00\x00\x00\x00\x00\x00"
EXEC_2 = b"\x0a\x00\x00\x00\x17\x02\x00\x00\x00\x00\x01\x00\x00\x00"  # no parameters
EXEC_LAST = b"\x0a\x00\x00\x00\x17\xff\xff\xff\xff\x00\x01\x00\x00\x00"  # MariaDB "last prepared" id -1
CLOSE_1 = b"\x05\x00\x00\x00\x19\x01\x00\x00\x00"
CLOSE_2 = b"\x05\x00\x00\x00\x19\x02\x00\x00\x00"
RESET_1 = b"\x05\x00\x00\x00\x1a\x01\x00\x00\x00"
FETCH_1 = b"\x09\x00\x00\x00\x1c\x01\x00\x00\x00\x0a\x00\x00\x00"  # 10 rows
LONG_DATA_1 = b"\x0b\x00\x00\x00\x18\x01\x00\x00\x00\x00\x00blob"
BULK_2 = b"\x20\x00\x00\x00\xfa\x02\x00\x00\x00\x80\x00\x08\x00\x00\x2a"  # cut: rows follow
INIT_DB_SHOP = b"\x05\x00\x00\x00\x02shop"
INIT_DB_NOPE = b"\x05\x00\x00\x00\x02nope"
PING = b"\x01\x00\x00\x00\x0e"
QUIT = b"\x01\x00\x00\x00\x01"
RESET_CONNECTION = b"\x01\x00\x00\x00\x1f"
STATISTICS = b"\x01\x00\x00\x00\x09"
FIELD_LIST = b"\x08\x00\x00\x00\x04users\x00%"
# COM_CHANGE_USER: "bob\0", auth length 20 + 20 bytes, "inventory\0", charset 2d 00, plugin name.
CHANGE_USER = b"\x3c\x00\x00\x00\x11bob\x00\x14" + b"\x11" * 20 + b"inventory\x00\x2d\x00mysql_native_password\x00"

AUTH_32 = bytes(range(0x40, 0x60))
# HandshakeResponse41, seq 1: caps 0x013aa209 (LONG_PASSWORD, CONNECT_WITH_DB, PROTOCOL_41, TRANSACTIONS,
# SECURE_CONNECTION, MULTI_RESULTS, PLUGIN_AUTH, CONNECT_ATTRS, PLUGIN_AUTH_LENENC_CLIENT_DATA, DEPRECATE_EOF),
# max packet 16 MiB, charset 255, 23 zero bytes, "app\0", lenenc auth (32 bytes), "shop\0", plugin name.
HANDSHAKE_DB = (
    b"\x60\x00\x00\x01\x09\xa2\x3a\x01\x00\x00\x00\x01\xff"
    + b"\x00" * 23
    + b"app\x00\x20"
    + AUTH_32
    + b"shop\x00caching_sha2_password\x00"
)
# Same without CONNECT_WITH_DB (caps 0x013aa201) and without a database.
HANDSHAKE_NO_DB = (
    b"\x5b\x00\x00\x01\x01\xa2\x3a\x01\x00\x00\x00\x01\xff"
    + b"\x00" * 23
    + b"app\x00\x20"
    + AUTH_32
    + b"caching_sha2_password\x00"
)
# CLIENT_COMPRESS negotiated (caps 0x013aa229).
HANDSHAKE_COMPRESS = (
    b"\x60\x00\x00\x01\x29\xa2\x3a\x01\x00\x00\x00\x01\xff"
    + b"\x00" * 23
    + b"app\x00\x20"
    + AUTH_32
    + b"shop\x00caching_sha2_password\x00"
)
# MariaDB Connector/C: caps 0x000aa208 (no CLIENT_MYSQL bit, 1-byte auth length), extended capabilities
# 0x00000004 in the last 4 filler bytes, handshake after TLS so seq 2.
HANDSHAKE_MARIADB = (
    b"\x58\x00\x00\x02\x08\xa2\x0a\x00\x00\x00\x00\x01\x2d"
    + b"\x00" * 19
    + b"\x04\x00\x00\x00"
    + b"maria\x00\x14"
    + b"\x22" * 20
    + b"ledger\x00mysql_native_password\x00"
)
# SSLRequest: caps 0x012aaa01 (with CLIENT_SSL), max packet, charset, 23 zero bytes; 32-byte payload.
SSL_REQUEST = b"\x20\x00\x00\x01\x01\xaa\x2a\x01\x00\x00\x00\x01\xff" + b"\x00" * 23

# --- server packets ---------------------------------------------------------------------------------------

OK = b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"
OK_3_ROWS = b"\x07\x00\x00\x01\x00\x03\x00\x02\x00\x00\x00"
OK_300_ROWS = b"\x09\x00\x00\x01\x00\xfc\x2c\x01\x00\x02\x00\x00\x00"
EOF = b"\x05\x00\x00\x01\xfe\x00\x00\x02\x00"
# Column count 2, then the first column definition (catalog "def" ...), cut by the capture.
RESULTSET_2 = b"\x01\x00\x00\x01\x02\x1d\x00\x00\x02\x03def\x04shop\x05users"
RESULTSET_300 = b"\x03\x00\x00\x01\xfc\x2c\x01"
RESULTSET_OPTIONAL_METADATA = b"\x02\x00\x00\x01\x01\x03"  # metadata_follows 1, 3 columns
# COM_STMT_PREPARE_OK: stmt 1, 2 columns, 1 param, filler, 0 warnings; then the parameter definition (seq 2).
PREPARE_OK_1 = b"\x0c\x00\x00\x01\x00\x01\x00\x00\x00\x02\x00\x01\x00\x00\x00\x00\x17\x00\x00\x02\x03def"
PREPARE_OK_2 = b"\x0c\x00\x00\x01\x00\x02\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x17\x00\x00\x02\x03def"
PREPARE_OK_3 = b"\x0c\x00\x00\x01\x00\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"  # no params, no columns
ERR_1146 = b"\x28\x00\x00\x01\xff\x7a\x04#42S02Table 'shop.nope' doesn't exist"  # 3 + 6 + 31
ERR_1096 = b"\x17\x00\x00\x01\xff\x48\x04#HY000No tables used"  # the spec's own example
ERR_1049 = b"\x20\x00\x00\x01\xff\x19\x04#42000Unknown database 'nope'"
ERR_1062 = b"\x37\x00\x00\x01\xff\x26\x04#23000Duplicate entry 'a@b.io' for key 'users.email'"
# ER_PARSE_ERROR cut by the capture inside the quoted query fragment.
ERR_1064_CUT = (
    b"\x90\x00\x00\x01\xff\x28\x04#42000You have an error in your SQL syntax; near 'FROM users WHERE pw = 'hun"
)
ERR_NO_STATE = b"\x17\x00\x00\x00\xff\x10\x04Too many connections"  # handshake phase: no '#' + SQLSTATE
AUTH_SWITCH = b"\x2c\x00\x00\x02\xfemysql_native_password\x00" + b"\x33" * 20 + b"\x00"
LOCAL_INFILE = b"\x0b\x00\x00\x01\xfb/tmp/x.csv"

GREETING_MYSQL = (
    b"\x4a\x00\x00\x00\x0a8.0.36\x00\x0d\x00\x00\x00abcdefgh\x00\xff\xff\xff\x02\x00\xff\xdf\x15"
    + b"\x00" * 10
    + b"ijklmnopqrst\x00caching_sha2_password\x00"
)
GREETING_MARIADB = (
    b"\x63\x00\x00\x00\x0a5.5.5-10.11.6-MariaDB-0+deb12u1\x00\x0e\x00\x00\x00abcdefgh\x00\xfe\xf7\x2d\x02\x00"
    b"\xff\x81\x15" + b"\x00" * 6 + b"\x1d\x00\x00\x00" + b"ijklmnopqrst\x00mysql_native_password\x00"
)
GREETING_MARIADB_11 = b"\x1c\x00\x00\x00\x0a11.4.2-MariaDB-ubu2404\x00\x0f\x00\x00\x00"  # cut after the id

COMPLETE_VECTORS = [
    Q_SELECT_1, Q_SELECT_USERS, Q_SECRET, Q_INSERT, Q_USE, Q_ATTRS_NONE, Q_ATTRS_NULL, Q_EMPTY, PREPARE_USERS,
    PREPARE_INSERT, EXEC_1, EXEC_2, EXEC_LAST, CLOSE_1, CLOSE_2, RESET_1, FETCH_1, LONG_DATA_1, INIT_DB_SHOP,
    INIT_DB_NOPE, PING, QUIT, RESET_CONNECTION, STATISTICS, FIELD_LIST, CHANGE_USER, HANDSHAKE_DB, HANDSHAKE_NO_DB,
    HANDSHAKE_COMPRESS, HANDSHAKE_MARIADB, SSL_REQUEST, OK, OK_3_ROWS, OK_300_ROWS, EOF, RESULTSET_300,
    RESULTSET_OPTIONAL_METADATA, PREPARE_OK_3, ERR_1146, ERR_1096, ERR_1049, ERR_1062, ERR_NO_STATE, AUTH_SWITCH,
    LOCAL_INFILE, GREETING_MYSQL, GREETING_MARIADB,
]  # fmt: skip


def _length(packet: bytes) -> int:
    return packet[0] | packet[1] << 8 | packet[2] << 16


@pytest.mark.parametrize("packet", COMPLETE_VECTORS + [Q_ATTRS_ONE])
def test_vector_lengths_match_payloads(packet: bytes) -> None:
    assert _length(packet) == len(packet) - 4


def test_prefix_vectors_hold_a_complete_first_packet() -> None:
    for packet in (RESULTSET_2, PREPARE_OK_1, PREPARE_OK_2):
        first = 4 + _length(packet)
        assert first < len(packet) and packet[first + 3] == 2  # the next packet is seq 2
    assert _length(ERR_1064_CUT) > len(ERR_1064_CUT) - 4  # the capture ends mid-message
    assert _length(BULK_2) > len(BULK_2) - 4


# --- parse_command ----------------------------------------------------------------------------------------

LONG_QUERY_TEXT = "SELECT " + ", ".join(f"c{i}" for i in range(200)) + " FROM wide"
LONG_QUERY = (len(LONG_QUERY_TEXT) + 1).to_bytes(3, "little") + b"\x00\x03" + LONG_QUERY_TEXT.encode()
# A capture cut inside the 2-byte UTF-8 "é" of a table name.
CUT_UTF8 = b"\x20\x00\x00\x00\x03SELECT * FROM caf\xc3"


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        (Q_SELECT_1, MySqlCommand("query", 0x03, text="SELECT 1", end=13)),
        (Q_ATTRS_NONE, MySqlCommand("query", 0x03, text="SELECT 1", end=15)),
        (Q_ATTRS_ONE, MySqlCommand("query", 0x03, text="SELECT 1", end=28)),
        (Q_ATTRS_NULL, MySqlCommand("query", 0x03, text="SELECT 1", end=22)),
        (Q_EMPTY, MySqlCommand("query", 0x03, text="", end=5)),
        (PREPARE_USERS, MySqlCommand("stmt_prepare", 0x16, text="SELECT * FROM users WHERE id = ?", end=37)),
        (EXEC_1, MySqlCommand("stmt_execute", 0x17, stmt_id=1, end=26)),
        (EXEC_LAST, MySqlCommand("stmt_execute", 0x17, stmt_id=0xFFFFFFFF, end=14)),
        (CLOSE_1, MySqlCommand("stmt_close", 0x19, stmt_id=1, end=9)),
        (RESET_1, MySqlCommand("stmt_reset", 0x1A, stmt_id=1, end=9)),
        (FETCH_1, MySqlCommand("stmt_fetch", 0x1C, stmt_id=1, end=13)),
        (LONG_DATA_1, MySqlCommand("stmt_send_long_data", 0x18, stmt_id=1, end=15)),
        (BULK_2, MySqlCommand("stmt_bulk_execute", 0xFA, stmt_id=2, truncated=True, end=36)),
        (INIT_DB_SHOP, MySqlCommand("init_db", 0x02, schema="shop", end=9)),
        (PING, MySqlCommand("ping", 0x0E, end=5)),
        (QUIT, MySqlCommand("quit", 0x01, end=5)),
        (RESET_CONNECTION, MySqlCommand("reset_connection", 0x1F, end=5)),
        (STATISTICS, MySqlCommand("statistics", 0x09, end=5)),
        (FIELD_LIST, MySqlCommand("field_list", 0x04, text="users", end=12)),
        (CHANGE_USER, MySqlCommand("change_user", 0x11, schema="inventory", end=64)),
        (HANDSHAKE_DB, MySqlCommand("handshake_response", -1, schema="shop", capabilities=0x013AA209, end=100)),
        (HANDSHAKE_NO_DB, MySqlCommand("handshake_response", -1, capabilities=0x013AA201, end=95)),
        (HANDSHAKE_MARIADB, MySqlCommand("handshake_response", -1, schema="ledger", capabilities=0xAA208, end=92)),
        (SSL_REQUEST, MySqlCommand("ssl_request", -1, capabilities=0x012AAA01, end=36)),
        (LONG_QUERY[:512], MySqlCommand("query", 0x03, text=LONG_QUERY_TEXT[:507], truncated=True, end=1110)),
        (CUT_UTF8, MySqlCommand("query", 0x03, text="SELECT * FROM caf", truncated=True, end=36)),
    ],
)
def test_parse_command(req: bytes, expected: MySqlCommand) -> None:
    assert parse_command(req) == expected


@pytest.mark.parametrize(
    "req",
    [
        b"",
        b"\x01\x00\x00",
        b"\x01\x00\x00\x00",  # header only
        b"\x00\x00\x00\x00\x03",  # zero length
        b"\x01\x00\x00\x03\x0e",  # seq 3: an auth continuation, not a command
        b"\x01\x00\x00\x00\x55",  # unknown command byte
        b"\x02\x00\x00\x00\x0e\x00",  # PING with a payload
        b"\x06\x00\x00\x00\x19\x01\x00\x00\x00\x00",  # COM_STMT_CLOSE is exactly 5 bytes
        b"\x05\x00\x00\x00\x17\x01\x00\x00\x00",  # COM_STMT_EXECUTE shorter than its fixed fields
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS ClientHello
        b"\x20\x00\x00\x01" + b"\x00" * 32,  # seq 1, 32 bytes, no CLIENT_PROTOCOL_41
        b"\x20\x00\x00\x01\x01\xa2\x3a\x01\x00\x00\x00\x01\xff" + b"\x00" * 23,  # 32 bytes but no CLIENT_SSL
        b"\x24\x00\x00\x01\x09\xa2\x3a\x01\x00\x00\x00\x01\xff" + b"\x01" * 23 + b"app\x00",  # filler not zero
    ],
)
def test_parse_command_rejects(req: bytes) -> None:
    assert parse_command(req) is None


def test_parse_command_at_offset_walks_pipelined_packets() -> None:
    req = CLOSE_1 + Q_SELECT_1
    first = parse_command(req)
    assert first is not None and first.kind == "stmt_close"
    second = parse_command(req, first.end)
    assert second == MySqlCommand("query", COM_QUERY, text="SELECT 1", end=len(req))
    assert parse_command(req, len(req)) is None
    assert parse_command(req, -1) is None


def test_execute_values_are_never_kept() -> None:
    s = MySqlSession(capture_raw=True)
    s.describe(PREPARE_USERS, PREPARE_OK_1)
    call = s.describe(EXEC_1, RESULTSET_2)
    assert call is not None and call.operation == "SELECT"
    # EXEC_1 binds the value 42; neither the parsed command nor the call may carry it.
    assert "42" not in repr(call) and "42" not in repr(parse_command(EXEC_1))


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        (Q_SELECT_1, True),
        (PING, True),
        (EXEC_1, True),
        (LONG_QUERY[:512], True),  # length exceeds the capture
        (CLOSE_1 + Q_SELECT_1, True),  # pipelined close before a query
        (Q_SELECT_1 + b"garbage", False),  # shorter than the capture and not followed by a command
        (b"\x02\x00\x00\x00\x0e\x00", False),
        (b"\x01\x00\x00\x01\x0e", False),  # seq 1
        (b"\x01\x00\x00\x00\x00", False),  # COM_SLEEP is server-internal
        (HANDSHAKE_DB, False),
        (OK, False),
        (b"", False),
        (b"\x08\x00\x00\x00", False),
    ],
)
def test_looks_like_command(req: bytes, expected: bool) -> None:
    assert looks_like_command(req) is expected


# --- parse_response ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resp", "command", "expected"),
    [
        (OK, None, MySqlResponse("ok", affected_rows=0)),
        (OK_3_ROWS, COM_QUERY, MySqlResponse("ok", affected_rows=3)),
        (OK_300_ROWS, None, MySqlResponse("ok", affected_rows=300)),
        (EOF, None, MySqlResponse("eof")),
        (RESULTSET_2, COM_QUERY, MySqlResponse("resultset", column_count=2)),
        (RESULTSET_300, None, MySqlResponse("resultset", column_count=300)),
        (RESULTSET_OPTIONAL_METADATA, None, MySqlResponse("resultset", column_count=3)),
        (PREPARE_OK_1, COM_STMT_PREPARE, MySqlResponse("prepare_ok", stmt_id=1, column_count=2, param_count=1)),
        # Without the command, the parameter definition that follows (seq 2) tells PREPARE_OK from OK.
        (PREPARE_OK_1, None, MySqlResponse("prepare_ok", stmt_id=1, column_count=2, param_count=1)),
        (PREPARE_OK_3, COM_STMT_PREPARE, MySqlResponse("prepare_ok", stmt_id=3, column_count=0, param_count=0)),
        (PREPARE_OK_3, None, MySqlResponse("ok", affected_rows=3)),  # ambiguous alone: read as OK
        (ERR_1146, COM_QUERY, MySqlResponse("err", 1146, "42S02", "Table 'shop.nope' doesn't exist")),
        (ERR_1096, None, MySqlResponse("err", 1096, "HY000", "No tables used")),
        (ERR_1062, None, MySqlResponse("err", 1062, "23000", "Duplicate entry '?' for key 'users.email'")),
        (ERR_1064_CUT, None, MySqlResponse("err", 1064, "42000", "You have an error in your SQL syntax; near '?'")),
        (ERR_NO_STATE, None, MySqlResponse("err", 1040, None, "Too many connections")),
        (b"\x03\x00\x00\x01\xff\x10\x04", None, MySqlResponse("err", 1040, None, "")),
        (b"\x09\x00\x00\x01\xff\xff\xff\x01\x02\x00\x10\x00\x00", None, MySqlResponse("unknown")),  # progress
        (GREETING_MYSQL, None, MySqlResponse("greeting", server_version="8.0.36")),
        (GREETING_MARIADB, None, MySqlResponse("greeting", server_version="10.11.6-MariaDB-0+deb12u1")),
        (GREETING_MARIADB_11, None, MySqlResponse("greeting", server_version="11.4.2-MariaDB-ubu2404")),
        (AUTH_SWITCH, COM_PING, MySqlResponse("auth_switch")),
        (LOCAL_INFILE, COM_QUERY, MySqlResponse("local_infile")),
        (b"", None, MySqlResponse("unknown")),
        (b"\x01\x00\x00\x01", None, MySqlResponse("unknown")),
        (b"\x00\x00\x00\x01\x00", None, MySqlResponse("unknown")),
        (b"\x05\x00\x00\x01\x01abcd", None, MySqlResponse("unknown")),  # AuthMoreData, not a column count
        (b"\x0a\x00\x00\x01\x0a", None, MySqlResponse("unknown")),  # 0x0a at seq 1: not a greeting
        (b"\x01\x00\x00\x01\x0a", None, MySqlResponse("resultset", column_count=10)),
        (b"\x05\x00\x00\x00\x0a\x01\x02\x03\x00", None, MySqlResponse("unknown")),  # version not printable
        (b"HTTP/1.1 200 OK\r\n", None, MySqlResponse("unknown")),
    ],
)
def test_parse_response(resp: bytes, command: int | None, expected: MySqlResponse) -> None:
    assert parse_response(resp, command) == expected


# --- MySqlSession -----------------------------------------------------------------------------------------


def test_select_with_resultset() -> None:
    s = MySqlSession()
    call = s.describe(Q_SELECT_USERS, RESULTSET_2)
    assert call == db.DbCall(
        system=db.MYSQL, operation="SELECT", collection="users", query_text="SELECT id, name FROM users"
    )


def test_literals_are_sanitized_unless_raw_is_asked_for() -> None:
    call = MySqlSession().describe(Q_SECRET, RESULTSET_2)
    assert call is not None and call.operation == "SELECT" and call.collection == "users"
    assert call.query_text is not None and "a@b.io" not in call.query_text
    raw = MySqlSession(capture_raw=True).describe(Q_SECRET, RESULTSET_2)
    assert raw is not None and raw.query_text == "SELECT * FROM users WHERE email = 'a@b.io'"
    insert = MySqlSession().describe(Q_INSERT, OK)
    assert insert is not None and insert.operation == "INSERT" and insert.collection == "orders"
    assert insert.query_text is not None and "424242" not in insert.query_text


def test_truncated_query_is_flagged() -> None:
    call = MySqlSession().describe(LONG_QUERY[:512], RESULTSET_2)
    assert call is not None and call.truncated and call.operation == "SELECT"
    cut_literal = b"\x40\x00\x00\x00\x03SELECT * FROM users WHERE email = 'alice@exa"
    call = MySqlSession().describe(cut_literal, b"")
    assert call is not None and call.truncated
    assert call.query_text is not None and "alice" not in call.query_text


def test_error_response_sets_status() -> None:
    call = MySqlSession().describe(b"\x14\x00\x00\x00\x03SELECT * FROM nope", ERR_1146)
    assert call is not None
    assert (call.status_code, call.error_message, call.is_error) == ("1146", "Table 'shop.nope' doesn't exist", True)
    dup = MySqlSession().describe(Q_INSERT, ERR_1062)
    assert dup is not None and dup.status_code == "1062" and "a@b.io" not in dup.error_message


def test_greeting_decides_mariadb_or_mysql() -> None:
    s = MySqlSession()
    assert s.system == db.MYSQL
    assert s.describe(b"", GREETING_MARIADB) is None
    assert (s.system, s.server_version) == (db.MARIADB, "10.11.6-MariaDB-0+deb12u1")
    call = s.describe(PING, OK)
    assert call == db.DbCall(system=db.MARIADB, operation="PING")
    assert s.describe(b"", GREETING_MYSQL) is None
    assert s.system == db.MYSQL
    caller_said = MySqlSession(system=db.MARIADB)
    assert caller_said.describe(PING, OK) == db.DbCall(system=db.MARIADB, operation="PING")
    settable = MySqlSession()
    settable.system = db.MARIADB
    assert settable.describe(PING, OK) == db.DbCall(system=db.MARIADB, operation="PING")


def test_handshake_names_the_namespace_and_is_not_a_call() -> None:
    s = MySqlSession()
    assert s.describe(SSL_REQUEST, b"") is None
    assert s.describe(HANDSHAKE_DB, OK) is None
    assert s.namespace == "shop"
    call = s.describe(Q_SELECT_USERS, RESULTSET_2)
    assert call is not None and call.namespace == "shop"
    assert s.describe(HANDSHAKE_NO_DB, OK) is None
    assert s.namespace is None
    assert s.describe(HANDSHAKE_MARIADB, OK) is None
    assert s.namespace == "ledger"


def test_init_db_and_use_change_the_namespace_only_on_success() -> None:
    s = MySqlSession()
    assert s.describe(INIT_DB_SHOP, OK) == db.DbCall(system=db.MYSQL, operation="INIT_DB", namespace="shop")
    assert s.namespace == "shop"
    failed = s.describe(INIT_DB_NOPE, ERR_1049)
    assert failed is not None and failed.status_code == "1049" and failed.namespace == "nope"
    assert s.namespace == "shop"
    use = s.describe(Q_USE, OK)
    assert use is not None and use.namespace == "shop"
    assert s.namespace == "audit"


def test_prepare_execute_close() -> None:
    s = MySqlSession()
    prepare = s.describe(PREPARE_USERS, PREPARE_OK_1)
    assert prepare == db.DbCall(
        system=db.MYSQL, operation="PREPARE", collection="users", query_text="SELECT * FROM users WHERE id = ?"
    )
    assert len(s) == 1
    execute = s.describe(EXEC_1, RESULTSET_2)
    assert execute == db.DbCall(
        system=db.MYSQL, operation="SELECT", collection="users", query_text="SELECT * FROM users WHERE id = ?"
    )
    assert s.describe(RESET_1, OK) == db.DbCall(
        system=db.MYSQL, operation="STMT_RESET", collection="users", query_text="SELECT * FROM users WHERE id = ?"
    )
    fetch = s.describe(FETCH_1, RESULTSET_2)
    assert fetch is not None and (fetch.operation, fetch.collection) == ("STMT_FETCH", "users")
    assert s.describe(CLOSE_1, b"") is None
    assert len(s) == 0
    assert s.describe(EXEC_1, RESULTSET_2) == db.DbCall(system=db.MYSQL, operation="EXECUTE")


def test_failed_prepare_is_an_error_call() -> None:
    s = MySqlSession()
    call = s.describe(b"\x13\x00\x00\x00\x16SELECT * FROM nope", ERR_1146)
    assert call is not None and (call.operation, call.collection, call.status_code) == ("PREPARE", "nope", "1146")
    assert len(s) == 0


def test_close_pipelined_before_the_next_command() -> None:
    s = MySqlSession()
    s.describe(PREPARE_USERS, PREPARE_OK_1)
    s.describe(PREPARE_INSERT, PREPARE_OK_2)
    assert len(s) == 2
    call = s.describe(CLOSE_1 + Q_SELECT_USERS, RESULTSET_2, count_hint=2)
    assert call is not None and call.operation == "SELECT" and call.batch_size == 0
    assert len(s) == 1
    call = s.describe(CLOSE_2 + LONG_DATA_1 + EXEC_1, OK, count_hint=3)
    assert call == db.DbCall(system=db.MYSQL, operation="EXECUTE")
    assert len(s) == 0


def test_mariadb_pipelined_prepare_and_execute_is_one_execution() -> None:
    s = MySqlSession()
    call = s.describe(PREPARE_INSERT + EXEC_LAST, PREPARE_OK_2, count_hint=2)
    assert call is not None and (call.operation, call.collection, call.batch_size) == ("INSERT", "orders", 0)
    assert call.query_text == "INSERT INTO orders (id, n) VALUES (?, ?)"
    again = s.describe(EXEC_LAST, OK)
    assert again is not None and again.operation == "INSERT"
    by_id = s.describe(EXEC_2, OK)
    assert by_id is not None and by_id.operation == "INSERT"


def test_batches() -> None:
    s = MySqlSession()
    two = s.describe(Q_INSERT + Q_INSERT, OK, count_hint=2)
    assert two is not None
    assert (two.operation, two.collection, two.batch_size, two.truncated) == ("BATCH INSERT", "orders", 2, False)
    assert two.query_text is not None and "424242" not in two.query_text and ";" not in two.query_text
    mixed = s.describe(Q_INSERT + Q_SELECT_USERS, OK, count_hint=2)
    assert mixed is not None and (mixed.operation, mixed.collection, mixed.batch_size) == ("BATCH", None, 2)
    assert mixed.query_text is not None and mixed.query_text.endswith("; SELECT id, name FROM users")
    s.describe(PREPARE_INSERT, PREPARE_OK_2)
    # The kernel counted 5 executes; the capture holds one: the other four are not guessed.
    many = s.describe(EXEC_2, OK, count_hint=5)
    assert many is not None
    assert (many.operation, many.collection, many.batch_size, many.truncated) == ("BATCH", None, 5, True)
    assert many.query_text == "INSERT INTO orders (id, n) VALUES (?, ?)"
    bulk = s.describe(BULK_2, OK)
    assert bulk is not None and (bulk.operation, bulk.collection, bulk.batch_size) == ("BATCH INSERT", "orders", 0)


def test_lru_bound_counts_evictions() -> None:
    s = MySqlSession(max_statements=2)
    s.describe(PREPARE_USERS, PREPARE_OK_1)
    s.describe(PREPARE_INSERT, PREPARE_OK_2)
    s.describe(EXEC_1, RESULTSET_2)  # touching 1 makes 2 the oldest
    s.describe(b"\x0f\x00\x00\x00\x16DELETE FROM tmp", PREPARE_OK_3)
    assert (len(s), s.evicted) == (2, 1)
    assert s.describe(EXEC_2, OK) == db.DbCall(system=db.MYSQL, operation="EXECUTE")
    kept = s.describe(EXEC_1, OK)
    assert kept is not None and kept.operation == "SELECT"
    none = MySqlSession(max_statements=0)
    none.describe(PREPARE_USERS, PREPARE_OK_1)
    assert (len(none), none.evicted) == (0, 0)


def test_session_resets() -> None:
    s = MySqlSession()
    s.describe(PREPARE_USERS, PREPARE_OK_1)
    assert s.describe(RESET_CONNECTION, OK) == db.DbCall(system=db.MYSQL, operation="RESET_CONNECTION")
    assert len(s) == 0
    s.describe(PREPARE_USERS, PREPARE_OK_1)
    change = s.describe(CHANGE_USER, OK)
    assert change == db.DbCall(system=db.MYSQL, operation="CHANGE_USER", namespace="inventory")
    assert (len(s), s.namespace) == (0, "inventory")
    s.describe(PREPARE_USERS, PREPARE_OK_1)
    assert s.describe(QUIT, b"") is None
    assert len(s) == 0


def test_other_commands() -> None:
    s = MySqlSession()
    assert s.describe(STATISTICS, b"\x05\x00\x00\x01Up: 1") == db.DbCall(system=db.MYSQL, operation="STATISTICS")
    assert s.describe(FIELD_LIST, EOF) == db.DbCall(system=db.MYSQL, operation="FIELD_LIST", collection="users")
    assert s.describe(Q_EMPTY, b"") == db.DbCall(system=db.MYSQL)


def test_records_that_are_not_operations() -> None:
    s = MySqlSession()
    for req, resp in [
        (b"", GREETING_MYSQL),
        (b"", b""),
        (SSL_REQUEST, b""),
        (HANDSHAKE_DB, AUTH_SWITCH),
        (b"\x14\x00\x00\x03" + b"\x44" * 20, OK),  # auth switch response (seq 3)
        (QUIT, b""),
        (CLOSE_1, b""),
        (b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n"),
    ]:
        assert s.describe(req, resp) is None
    assert s.errors == 0


def test_compressed_sessions_report_nothing() -> None:
    s = MySqlSession()
    assert s.describe(HANDSHAKE_COMPRESS, OK) is None
    assert s.compressed
    assert s.describe(Q_SELECT_1, RESULTSET_2) is None
    s.describe(HANDSHAKE_DB, OK)
    assert s.describe(Q_SELECT_1, RESULTSET_2) is not None


# --- fuzzing ----------------------------------------------------------------------------------------------

FUZZ_SESSION = MySqlSession(max_statements=4)
SEEDS = COMPLETE_VECTORS + [RESULTSET_2, PREPARE_OK_1, PREPARE_OK_2, ERR_1064_CUT, BULK_2, GREETING_MARIADB_11]
HINTS: list[int | None] = [None, COM_QUERY, COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_PING]


def _exercise(req: bytes, resp: bytes, hint: int) -> None:
    for data in (req, resp):
        parse_command(data)
        parse_command(data, hint % 16)
        looks_like_command(data)
        for command in HINTS:
            parse_response(data, command)
    FUZZ_SESSION.describe(req, resp, hint)
    assert FUZZ_SESSION.errors == 0
    assert len(FUZZ_SESSION) <= 4


@settings(max_examples=10_000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), st.binary(max_size=300), st.integers(min_value=-1, max_value=300))
def test_fuzz_arbitrary_bytes_never_raise(req: bytes, resp: bytes, hint: int) -> None:
    _exercise(req, resp, hint)


def _mutate(rng: random.Random) -> bytes:
    """A real packet (or two pipelined) with bytes flipped, inserted and deleted, and the end cut off."""
    data = bytearray(rng.choice(SEEDS))
    if rng.random() < 0.5:
        data += rng.choice(SEEDS)
    for _ in range(rng.randrange(5)):
        if not data:
            break
        pos = rng.randrange(len(data))
        op = rng.randrange(3)
        if op == 0:
            data[pos] = rng.randrange(256)
        elif op == 1:
            data[pos:pos] = rng.randbytes(rng.randrange(1, 9))
        else:
            del data[pos : pos + rng.randrange(1, 9)]
    return bytes(data[: rng.randrange(len(data) + 1)] if rng.random() < 0.5 else data)


@settings(max_examples=10_000, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=0, max_value=8))
def test_fuzz_mutated_packets_never_raise(seed: int, hint: int) -> None:
    # A seeded Random is much cheaper than drawing every mutation from hypothesis and replays just as well.
    rng = random.Random(seed)
    _exercise(_mutate(rng), _mutate(rng), hint)
