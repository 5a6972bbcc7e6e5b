"""Table-driven and fuzz tests for the Redis RESP2/RESP3 client-side parser.

Every capture below is written out by hand from the RESP wire format, lengths included, the way a client
(redis-py, redis-cli, a telnet user) or a Redis 7 server puts it on the wire.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otelbpf.protocols.db import REDIS, DbCall
from otelbpf.protocols.redis import (
    RedisCommand,
    RedisReply,
    RedisSession,
    key_shape,
    looks_like_command,
    parse_commands,
    parse_replies,
)

SET_MYKEY = b"*3\r\n$3\r\nSET\r\n$5\r\nmykey\r\n$5\r\nvalue\r\n"
SET_USER = b"*3\r\n$3\r\nSET\r\n$9\r\nuser:1234\r\n$11\r\nSECRETVALUE\r\n"
GET_USER = b"*2\r\n$3\r\nGET\r\n$9\r\nuser:1234\r\n"
GET_USER_5 = b"*2\r\n$3\r\nGET\r\n$9\r\nuser:5678\r\n"
INCR_HITS = b"*2\r\n$4\r\nINCR\r\n$7\r\nhits:42\r\n"
MULTI = b"*1\r\n$5\r\nMULTI\r\n"
EXEC = b"*1\r\n$4\r\nEXEC\r\n"
SELECT_2 = b"*2\r\n$6\r\nSELECT\r\n$1\r\n2\r\n"
SELECT_99 = b"*2\r\n$6\r\nSELECT\r\n$2\r\n99\r\n"
HELLO_3 = b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n"
HELLO_3_AUTH = b"*5\r\n$5\r\nHELLO\r\n$1\r\n3\r\n$4\r\nAUTH\r\n$7\r\ndefault\r\n$10\r\nSECRETPASS\r\n"
AUTH = b"*2\r\n$4\r\nAUTH\r\n$10\r\nSECRETPASS\r\n"
CLIENT_SETNAME = b"*3\r\n$6\r\nCLIENT\r\n$7\r\nSETNAME\r\n$6\r\nworker\r\n"
CONFIG_GET = b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$9\r\nmaxmemory\r\n"
OBJECT_ENCODING = b"*3\r\n$6\r\nOBJECT\r\n$8\r\nENCODING\r\n$9\r\nuser:1234\r\n"
XINFO_STREAM = b"*3\r\n$5\r\nXINFO\r\n$6\r\nSTREAM\r\n$10\r\nevents:777\r\n"
EVAL_1KEY = b"*5\r\n$4\r\nEVAL\r\n$21\r\nreturn redis.call(KE)\r\n$1\r\n1\r\n$6\r\nlock:9\r\n$6\r\nSECRET\r\n"
EVAL_0KEYS = b"*3\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n$1\r\n0\r\n"
ZUNION = b"*4\r\n$6\r\nZUNION\r\n$1\r\n2\r\n$4\r\nz:10\r\n$4\r\nz:11\r\n"
JSON_SET = b'*4\r\n$8\r\nJSON.SET\r\n$5\r\ndoc:1\r\n$1\r\n$\r\n$13\r\n{"pw":"SECR"}\r\n'
HMSET = b"*6\r\n$5\r\nHMSET\r\n$6\r\nmyhash\r\n$6\r\nfield1\r\n$5\r\nHello\r\n$6\r\nfield2\r\n$5\r\nWorld\r\n"
HSET_SESSION = (
    b"*4\r\n$4\r\nHSET\r\n$44\r\nsession:550e8400-e29b-41d4-a716-446655440000\r\n$4\r\nuser\r\n$6\r\nSECRET\r\n"
)
RESET = b"*1\r\n$5\r\nRESET\r\n"
PING = b"*1\r\n$4\r\nPING\r\n"

# Redis 7.2's answer to HELLO 3: a RESP3 map of seven pairs.
HELLO_3_REPLY = (
    b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n$7\r\nversion\r\n$5\r\n7.2.4\r\n$5\r\nproto\r\n:3\r\n"
    b"$2\r\nid\r\n:5\r\n$4\r\nmode\r\n$10\r\nstandalone\r\n$4\r\nrole\r\n$6\r\nmaster\r\n$7\r\nmodules\r\n*0\r\n"
)
WRONGTYPE = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
WRONGTYPE_TEXT = "Operation against a key holding the wrong kind of value"


def cmd(name: str, key: bytes | None, argc: int) -> RedisCommand:
    return RedisCommand(name, key, argc)


# ---------------------------------------------------------------------------------------------- commands


@pytest.mark.parametrize(
    ("req", "expected"),
    [
        (SET_MYKEY, True),
        (GET_USER, True),
        (b"*10\r\n$", True),
        (b"PING\r\n", False),
        (b"*\r\n$3", False),
        (b"*3\r\n:1\r\n", False),
        (b"*-1\r\n$", False),
        (b"*3\r\n", False),
        (b"", False),
        (b"*12345678901234567890123\r\n$", False),
    ],
)
def test_looks_like_command(req: bytes, expected: bool) -> None:
    assert looks_like_command(req) is expected


@pytest.mark.parametrize(
    ("req", "commands", "truncated"),
    [
        (SET_MYKEY, [cmd("SET", b"mykey", 3)], False),
        (b"*3\r\n$3\r\nset\r\n$5\r\nmykey\r\n$5\r\nvalue\r\n", [cmd("SET", b"mykey", 3)], False),
        (
            SET_USER + GET_USER + INCR_HITS,
            [cmd("SET", b"user:1234", 3), cmd("GET", b"user:1234", 2), cmd("INCR", b"hits:42", 2)],
            False,
        ),
        (
            MULTI + INCR_HITS + INCR_HITS + EXEC,
            [cmd("MULTI", None, 1), cmd("INCR", b"hits:42", 2), cmd("INCR", b"hits:42", 2), cmd("EXEC", None, 1)],
            False,
        ),
        (CLIENT_SETNAME, [cmd("CLIENT SETNAME", None, 3)], False),
        (CONFIG_GET, [cmd("CONFIG GET", None, 3)], False),
        (b"*1\r\n$7\r\nCOMMAND\r\n", [cmd("COMMAND", None, 1)], False),
        (OBJECT_ENCODING, [cmd("OBJECT ENCODING", b"user:1234", 3)], False),
        (XINFO_STREAM, [cmd("XINFO STREAM", b"events:777", 3)], False),
        (EVAL_1KEY, [cmd("EVAL", b"lock:9", 5)], False),
        (EVAL_0KEYS, [cmd("EVAL", None, 3)], False),
        (ZUNION, [cmd("ZUNION", b"z:10", 4)], False),
        (JSON_SET, [cmd("JSON.SET", b"doc:1", 4)], False),
        (HELLO_3, [cmd("HELLO", None, 2)], False),
        (HELLO_3_AUTH, [cmd("HELLO", None, 5)], False),
        (AUTH, [cmd("AUTH", None, 2)], False),
        (SELECT_2, [cmd("SELECT", b"2", 2)], False),
        # Inline commands, as typed into telnet or sent by health checks; LF alone ends a line too.
        (b"PING\r\n", [cmd("PING", None, 1)], False),
        (b"get foo\nPING\r\n", [cmd("GET", b"foo", 2), cmd("PING", None, 1)], False),
        (b"\r\nPING\r\n", [cmd("PING", None, 1)], False),
        (b"SET k v", [cmd("SET", b"k", 3)], True),  # no line end: the last word may be cut, not the key
        (b"PIN", [], True),
        (b"hallo world\r\n", [], False),  # text that is no command
        # An empty multibulk is skipped, as Redis does.
        (b"*0\r\n" + PING, [cmd("PING", None, 1)], False),
        # Cut captures: a big value, a key, a length line, a CRLF, a name.
        (b"*3\r\n$3\r\nSET\r\n$9\r\nuser:1234\r\n$100000\r\nSECRETSECRET", [cmd("SET", b"user:1234", 3)], True),
        (b"*2\r\n$3\r\nGET\r\n$9\r\nuser:", [cmd("GET", None, 2)], True),
        (b"*2\r\n$3\r\nGET\r\n$1", [cmd("GET", None, 2)], True),
        (b"*2\r\n$3\r\nGET\r\n$", [cmd("GET", None, 2)], True),
        (b"*1\r\n$4\r\nPING\r", [cmd("PING", None, 1)], True),
        (b"*2\r\n$3\r\nGE", [], True),
        (b"*2\r", [], True),
        (SET_MYKEY + b"*2\r\n$3\r\nGET\r\n$5\r\nmy", [cmd("SET", b"mykey", 3), cmd("GET", None, 2)], True),
        (b"*3\r\n$3\r\nGET\r\n$1\r\nk\r\n", [cmd("GET", b"k", 3)], True),  # fewer arguments than declared
        # Garbage: TLS, HTTP-like binary, wrong element types, bad lengths, missing CRLF.
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", [], False),
        (b"*2\r\n$3\r\nGET\r\n:5\r\n", [], False),
        (b"*2\r\n$3\r\nGET\r\n$-1\r\n", [], False),
        (b"*1\r\n$4\r\nPINGxx", [], False),
        (b"*1\r\n$3\r\n\x00\x01\x02\r\n", [], False),
        (b"*1\r\n$3\r\n1AB\r\n", [], False),
        (b"*x\r\n", [], False),
        (b"*1\r\n$1_0\r\nPINGPINGPI\r\n", [], False),
        (SET_MYKEY + b"\x00garbage", [cmd("SET", b"mykey", 3)], False),
        (b"", [], False),
    ],
)
def test_parse_commands(req: bytes, commands: list[RedisCommand], truncated: bool) -> None:
    assert parse_commands(req) == (commands, truncated)


def test_parse_commands_limit() -> None:
    assert parse_commands(PING * 3, limit=2) == ([cmd("PING", None, 1)] * 2, True)
    assert parse_commands(PING * 2, limit=2) == ([cmd("PING", None, 1)] * 2, False)


def test_parse_commands_skips_values_by_length() -> None:
    # The value holds what looks like a command; it must be skipped by its declared length, not parsed.
    value = b"*1\r\n$4\r\nQUIT\r\n"
    req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$14\r\n" + value + b"\r\n"
    assert parse_commands(req) == ([cmd("SET", b"k", 3)], False)


# ----------------------------------------------------------------------------------------------- replies


def ok(kind: str) -> RedisReply:
    return RedisReply(kind)


@pytest.mark.parametrize(
    ("resp", "replies"),
    [
        (b"+OK\r\n", [ok("simple")]),
        (WRONGTYPE, [RedisReply("error", "WRONGTYPE", WRONGTYPE_TEXT)]),
        (b"-NOAUTH Authentication required.\r\n", [RedisReply("error", "NOAUTH", "Authentication required.")]),
        (b"-MOVED 3999 127.0.0.1:6381\r\n", [RedisReply("error", "MOVED", "3999 127.0.0.1:6381")]),
        (b"-Error message\r\n", [RedisReply("error", "Error", "message")]),
        (b"-\r\n", [RedisReply("error", "ERR", "")]),
        (b"-(x) y\r\n", [RedisReply("error", "ERR", "(x) y")]),
        # The arguments Redis echoes for an unknown command are client values: they are dropped.
        (
            b"-ERR unknown command 'FOO', with args beginning with: 'SECRET' \r\n",
            [RedisReply("error", "ERR", "unknown command 'FOO'")],
        ),
        (b"-ERR bad \x00\xff\r\n", [RedisReply("error", "ERR", "bad ??")]),
        (b":1000\r\n:-1\r\n:+7\r\n", [ok("integer")] * 3),
        (b"$5\r\nhello\r\n$0\r\n\r\n$-1\r\n", [ok("bulk")] * 3),
        (b"*2\r\n$3\r\nfoo\r\n$3\r\nbar\r\n*0\r\n*-1\r\n", [ok("array")] * 3),
        (b"_\r\n", [ok("null")]),
        (b"#t\r\n#f\r\n", [ok("boolean")] * 2),
        (b",3.14\r\n,inf\r\n,-inf\r\n,nan\r\n,1.5e-10\r\n", [ok("double")] * 5),
        (b"(3492890328409238509324850943850943825024385\r\n", [ok("bignum")]),
        (b"!21\r\nSYNTAX invalid syntax\r\n", [RedisReply("blob_error", "SYNTAX", "invalid syntax")]),
        (b"=15\r\ntxt:Some string\r\n", [ok("verbatim")]),
        (b"%2\r\n+first\r\n:1\r\n+second\r\n:2\r\n", [ok("map")]),
        (b"~2\r\n+orange\r\n+apple\r\n", [ok("set")]),
        (b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n", [ok("push")]),
        (HELLO_3_REPLY, [ok("map")]),
        # An attribute decorates the reply after it: the reply's type is that of the decorated value.
        (
            b"|1\r\n+key-popularity\r\n%2\r\n$1\r\na\r\n,0.1923\r\n$1\r\nb\r\n,0.0012\r\n*2\r\n:2039123\r\n:9543892\r\n",
            [ok("array")],
        ),
        (b"*3\r\n:1\r\n:2\r\n|1\r\n+ttl\r\n:3600\r\n:3\r\n+OK\r\n", [ok("array"), ok("simple")]),
        (b"|1\r\n+a\r\n:1\r\n", [RedisReply("attribute", complete=False)]),
        # Streamed strings and aggregates.
        (b"$?\r\n;4\r\nHell\r\n;5\r\no wor\r\n;1\r\nd\r\n;0\r\n", [ok("bulk")]),
        (b"*?\r\n:1\r\n:2\r\n:3\r\n.\r\n", [ok("array")]),
        (b"%?\r\n+a\r\n:1\r\n.\r\n~?\r\n.\r\n", [ok("map"), ok("set")]),
        # EXEC's array carries the queued commands' errors.
        (b"*2\r\n:1\r\n" + WRONGTYPE, [RedisReply("array", "WRONGTYPE", WRONGTYPE_TEXT)]),
        (b"*1\r\n*1\r\n!9\r\nERR inner\r\n", [RedisReply("array", "ERR", "inner")]),
        # A pipeline's replies in order; the first error of each reply is kept.
        (
            b"+OK\r\n$-1\r\n" + WRONGTYPE + b":2\r\n",
            [ok("simple"), ok("bulk"), RedisReply("error", "WRONGTYPE", WRONGTYPE_TEXT), ok("integer")],
        ),
        # Cut replies end the list; a cut error still names its kind.
        (b"$10\r\nabc", [RedisReply("bulk", complete=False)]),
        (b"+OK\r\n*3\r\n:1\r\n", [ok("simple"), RedisReply("array", complete=False)]),
        (b"-ERR cut mess", [RedisReply("error", "ERR", "cut mess", complete=False)]),
        (b"-ERR cut\r", [RedisReply("error", "ERR", "cut", complete=False)]),
        (b"!30\r\nLOADING Redis is lo", [RedisReply("blob_error", "LOADING", "Redis is lo", complete=False)]),
        (b"$?\r\n;4\r\nHe", [RedisReply("bulk", complete=False)]),
        (b"*?\r\n:1\r\n", [RedisReply("array", complete=False)]),
        (b"$", [RedisReply("bulk", complete=False)]),
        # Malformed values stop the list.
        (b":abc\r\n+OK\r\n", [RedisReply("integer", complete=False)]),
        (b"#x\r\n", [RedisReply("boolean", complete=False)]),
        (b"_x\r\n", [RedisReply("null", complete=False)]),
        (b",1.0x\r\n", [RedisReply("double", complete=False)]),
        (b"$3\r\nabcd\r\n", [RedisReply("bulk", complete=False)]),
        (b"!-1\r\n", [RedisReply("blob_error", complete=False)]),
        (b"~-1\r\n", [RedisReply("set", complete=False)]),
        (b"*1\r\n?\r\n", [RedisReply("array", complete=False)]),
        (b"*?\r\n.x\r\n", [RedisReply("array", complete=False)]),
        (b"*1\r\n" * 8 + b":1\r\n", [ok("array")]),
        (b"*1\r\n" * 9 + b":1\r\n", [RedisReply("array", complete=False)]),  # nesting past the depth bound
        (b"HTTP/1.1 200 OK\r\n", []),
        (b"", []),
    ],
)
def test_parse_replies(resp: bytes, replies: list[RedisReply]) -> None:
    assert parse_replies(resp) == replies


def test_parse_replies_limit() -> None:
    assert parse_replies(b"+OK\r\n" * 5, limit=3) == [ok("simple")] * 3


# --------------------------------------------------------------------------------------------- key shape


@pytest.mark.parametrize(
    ("key", "shape"),
    [
        (b"user:1234:profile", "user:?:profile"),
        (b"mykey", "mykey"),
        (b"session:550e8400-e29b-41d4-a716-446655440000", "session:?"),
        (b"obj:5f2b9c1e7a3d4b6c:meta", "obj:?:meta"),
        (b"sha:da39a3ee5e6b4b0d3255bfef95601890afd80709", "sha:?"),
        (b"blob:deadbeefcafebabe", "blob:?"),  # 16+ hex characters even without a digit
        (b"word:deadbeef", "word:deadbeef"),  # short hex-looking words stay
        (b"v2:cache", "v?:cache"),
        (b"a1b2c3d4e5:x", "?:x"),
        (b"img_deadbeef1234.png", "img_?.png"),
        (b"1.2.3", "?.?.?"),
        (b"\x00\x01bin\xff\xfe", "?bin?"),
        (b"caf\xc3\xa9:7", "caf?:?"),
        (b"", ""),
        (b"k" * 300, "k" * 128),
    ],
)
def test_key_shape(key: bytes, shape: str) -> None:
    assert key_shape(key) == shape


# --------------------------------------------------------------------------------------------- describe


def call(**fields: object) -> DbCall:
    return DbCall(system=REDIS, **fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("req", "resp", "hint", "expected"),
    [
        (SET_USER, b"+OK\r\n", 0, call(operation="SET", query_text="SET user:? ?")),
        (SET_MYKEY, b"+OK\r\n", 1, call(operation="SET", query_text="SET mykey ?")),
        (GET_USER, b"$-1\r\n", 0, call(operation="GET", query_text="GET user:?")),
        (HMSET, b"+OK\r\n", 0, call(operation="HMSET", query_text="HMSET myhash ? ? ? ?")),
        (HSET_SESSION, b":1\r\n", 0, call(operation="HSET", query_text="HSET session:? ? ?")),
        (PING, b"+PONG\r\n", 0, call(operation="PING", query_text="PING")),
        (b"PING\r\n", b"+PONG\r\n", 0, call(operation="PING", query_text="PING")),
        (AUTH, b"+OK\r\n", 0, call(operation="AUTH", query_text="AUTH ?")),
        (HELLO_3_AUTH, HELLO_3_REPLY, 0, call(operation="HELLO", query_text="HELLO ? ? ? ?")),
        (CLIENT_SETNAME, b"+OK\r\n", 0, call(operation="CLIENT SETNAME", query_text="CLIENT SETNAME ?")),
        (CONFIG_GET, b"*0\r\n", 0, call(operation="CONFIG GET", query_text="CONFIG GET ?")),
        (
            OBJECT_ENCODING,
            b"$6\r\nembstr\r\n",
            0,
            call(operation="OBJECT ENCODING", query_text="OBJECT ENCODING user:?"),
        ),
        (EVAL_1KEY, b":1\r\n", 0, call(operation="EVAL", query_text="EVAL ? ? lock:? ?")),
        (ZUNION, b"*0\r\n", 0, call(operation="ZUNION", query_text="ZUNION ? z:? ?")),
        (JSON_SET, b"+OK\r\n", 0, call(operation="JSON.SET", query_text="JSON.SET doc:? ? ?")),
        # Errors: the prefix is the status code, the rest the message.
        (
            INCR_HITS,
            WRONGTYPE,
            0,
            call(
                operation="INCR",
                query_text="INCR hits:?",
                status_code="WRONGTYPE",
                error_message=WRONGTYPE_TEXT,
            ),
        ),
        (
            GET_USER,
            b"!21\r\nSYNTAX invalid syntax\r\n",
            0,
            call(operation="GET", query_text="GET user:?", status_code="SYNTAX", error_message="invalid syntax"),
        ),
        (
            GET_USER,
            b"-MOVED 3999 127.0.0.1:6381\r\n",
            0,
            call(operation="GET", query_text="GET user:?", status_code="MOVED", error_message="3999 127.0.0.1:6381"),
        ),
        # Pipelines: one DbCall; the command is named only when every operation is known to be it.
        (
            GET_USER + GET_USER_5 + GET_USER,
            b"$-1\r\n" * 3,
            3,
            call(operation="PIPELINE GET", query_text="GET user:?", batch_size=3),
        ),
        (
            SET_USER + GET_USER + INCR_HITS,
            b"+OK\r\n$11\r\nSECRETVALUE\r\n:43\r\n",
            0,
            call(operation="PIPELINE", query_text="SET user:? ?; GET user:?; INCR hits:?", batch_size=3),
        ),
        (
            SET_USER + GET_USER,
            b"+OK\r\n" + WRONGTYPE,
            0,
            call(
                operation="PIPELINE",
                query_text="SET user:? ?; GET user:?",
                batch_size=2,
                status_code="WRONGTYPE",
                error_message=WRONGTYPE_TEXT,
            ),
        ),
        # A cut pipeline: the kernel's count gives the size, and unseen commands may differ.
        (
            GET_USER + GET_USER + b"*2\r\n$3\r\nGET\r\n$9\r\nus",
            b"",
            40,
            call(operation="PIPELINE", query_text="GET user:?; GET user:?; GET ?", batch_size=40, truncated=True),
        ),
        (
            GET_USER + GET_USER + b"*2\r\n$3\r\nGET\r\n$9\r\nus",
            b"",
            0,
            call(operation="PIPELINE GET", query_text="GET user:?; GET user:?; GET ?", batch_size=3, truncated=True),
        ),
        (SET_USER[:30], b"", 0, call(operation="SET", query_text="SET user:? ?", truncated=True)),
        (SET_USER[:30], b"", 5, call(operation="PIPELINE", query_text="SET user:? ?", batch_size=5, truncated=True)),
        # Same shapes so far, but unseen commands may differ: the seen ones are all listed.
        (
            GET_USER + GET_USER + b"*2\r\n$3",
            b"",
            9,
            call(operation="PIPELINE", query_text="GET user:?; GET user:?", batch_size=9, truncated=True),
        ),
        # The hint is ignored when the whole request was seen.
        (SET_USER, b"+OK\r\n", 7, call(operation="SET", query_text="SET user:? ?")),
        # Transactions: the queued commands make the batch, MULTI/EXEC wrap it.
        (
            MULTI + INCR_HITS + INCR_HITS + EXEC,
            b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:43\r\n:44\r\n",
            4,
            call(operation="MULTI INCR", query_text="MULTI; INCR hits:?; INCR hits:?; EXEC", batch_size=2),
        ),
        (
            MULTI + SET_USER + INCR_HITS + EXEC,
            b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n+OK\r\n" + WRONGTYPE,
            0,
            call(
                operation="MULTI",
                query_text="MULTI; SET user:? ?; INCR hits:?; EXEC",
                batch_size=2,
                status_code="WRONGTYPE",
                error_message=WRONGTYPE_TEXT,
            ),
        ),
        (
            MULTI + INCR_HITS + EXEC,
            b"+OK\r\n+QUEUED\r\n*1\r\n:43\r\n",
            0,
            call(operation="MULTI INCR", query_text="MULTI; INCR hits:?; EXEC"),
        ),
        (
            MULTI + INCR_HITS + INCR_HITS[:10],
            b"",
            12,
            call(operation="MULTI", query_text="MULTI; INCR hits:?", batch_size=10, truncated=True),
        ),
        (
            MULTI + b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n" + EXEC,
            b"+OK\r\n-EXECABORT Transaction discarded\r\n",
            0,
            call(
                operation="MULTI GET",
                query_text="MULTI; GET k; EXEC",
                status_code="EXECABORT",
                error_message="Transaction discarded",
            ),
        ),
        # Nothing that is a command.
        (b"\x16\x03\x01\x00", b"+OK\r\n", 0, None),
        (b"", b"", 3, None),
        (b"*2\r\n$3\r\nGE", b"", 0, None),
    ],
)
def test_describe(req: bytes, resp: bytes, hint: int, expected: DbCall | None) -> None:
    session = RedisSession()
    assert session.describe(req, resp, hint) == expected
    assert session.failures == 0


def test_values_never_leave_even_with_capture_raw() -> None:
    session = RedisSession(capture_raw=True)
    got = session.describe(SET_USER + AUTH + EVAL_1KEY, b"+OK\r\n+OK\r\n:1\r\n")
    assert got is not None
    assert got.query_text == "SET user:1234 ?; AUTH ?; EVAL ? ? lock:9 ?"
    assert "SECRET" not in repr(got)


def test_capture_raw_keeps_only_printable_keys() -> None:
    req = b"*2\r\n$3\r\nGET\r\n$6\r\nk\x00\x01:\xff7\r\n"
    assert RedisSession(capture_raw=True).describe(req, b"$-1\r\n") == call(operation="GET", query_text="GET k??:?7")


def test_select_sets_namespace_for_later_calls() -> None:
    session = RedisSession()
    assert session.describe(GET_USER, b"$-1\r\n") == call(operation="GET", query_text="GET user:?")
    assert session.describe(SELECT_2, b"+OK\r\n") == call(operation="SELECT", query_text="SELECT ?", namespace="2")
    assert session.describe(GET_USER, b"$-1\r\n") == call(operation="GET", query_text="GET user:?", namespace="2")
    # A refused SELECT leaves the index as it was.
    refused = session.describe(SELECT_99, b"-ERR DB index is out of range\r\n")
    assert refused == call(
        operation="SELECT",
        query_text="SELECT ?",
        namespace="2",
        status_code="ERR",
        error_message="DB index is out of range",
    )
    # In a pipeline the index is the one in force after it; a SELECT whose reply was cut off counts.
    got = session.describe(b"*2\r\n$6\r\nSELECT\r\n$2\r\n15\r\n" + GET_USER, b"")
    assert got == call(operation="PIPELINE", query_text="SELECT ?; GET user:?", namespace="15", batch_size=2)
    assert session.describe(RESET, b"+RESET\r\n") == call(operation="RESET", query_text="RESET", namespace="0")
    assert session.namespace == "0"


def test_hello_3_then_resp3_replies() -> None:
    session = RedisSession()
    assert session.describe(HELLO_3, HELLO_3_REPLY) == call(operation="HELLO", query_text="HELLO ?")
    # RESP3 replies after HELLO 3, with an out-of-band push ahead of the real reply.
    push = b">3\r\n$10\r\ninvalidate\r\n*1\r\n$9\r\nuser:1234\r\n"
    got = session.describe(SELECT_2 + GET_USER, push + b"+OK\r\n_\r\n")
    assert got == call(operation="PIPELINE", query_text="SELECT ?; GET user:?", namespace="2", batch_size=2)


def test_query_text_is_bounded() -> None:
    keys = [b"key:%c%c:%s" % (97 + i // 26, 97 + i % 26, b"x" * 60) for i in range(30)]
    req = b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$1\r\nv\r\n" % (len(k), k) for k in keys)
    got = RedisSession().describe(req, b"")
    assert got is not None and got.query_text is not None
    assert got.batch_size == 30 and got.operation == "PIPELINE SET"
    assert len(got.query_text) <= 1024 + 5 and got.query_text.endswith("; ...")
    many = b"*10001\r\n$4\r\nMSET\r\n$1\r\nk\r\n" + b"$1\r\nv\r\n" * 60
    single = RedisSession().describe(many, b"")
    assert single == call(operation="MSET", query_text="MSET k" + " ?" * 64 + " ...", truncated=True)


# ------------------------------------------------------------------------------------------------- fuzz

# No example database: the test run must leave no files behind.
FUZZ = settings(max_examples=10_000, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _check_all(req: bytes, resp: bytes, hint: int) -> None:
    """Feed one request/response pair to every public function; nothing may raise."""
    looks_like_command(req)
    cmds, truncated = parse_commands(req)
    assert isinstance(truncated, bool) and all(isinstance(c, RedisCommand) for c in cmds)
    for reply in parse_replies(resp):
        assert reply.error_message.isprintable() and len(reply.error_message) <= 256
    shape = key_shape(req)
    assert shape.isascii() and shape.isprintable() and len(shape) <= 128
    for capture_raw in (False, True):
        session = RedisSession(capture_raw=capture_raw)
        got = session._describe(req, resp, hint)  # no guard: a bug shows here instead of being counted
        if got is not None:
            assert got.query_text is not None and got.query_text.isprintable() and len(got.query_text) <= 1029
            assert got.batch_size != 1
    session = RedisSession()
    session.describe(req, resp, hint)
    assert session.failures == 0


@FUZZ
@given(st.binary(max_size=600), st.binary(max_size=300), st.integers(min_value=-5, max_value=10_000))
def test_fuzz_arbitrary_bytes(req: bytes, resp: bytes, hint: int) -> None:
    _check_all(req, resp, hint)


# Structured messages are built from a seed with plain random: hypothesis' recursive strategies cost ~3 ms per
# example, which 10,000 examples cannot afford.
_FUZZ_NAMES = [
    b"GET",
    b"set",
    b"HSET",
    b"MULTI",
    b"EXEC",
    b"SELECT",
    b"EVAL",
    b"CLIENT",
    b"OBJECT",
    b"JSON.GET",
    b"PING",
    b"ZUNION",
    b"RESET",
]
_FUZZ_ARGS = [b"user:12", b"0", b"1", b"SETNAME", b"ENCODING", b"", b"\r\n", b"$3", b"*1"]
_REPLY_LEAVES = [
    b"+OK\r\n",
    WRONGTYPE,
    b":12\r\n",
    b"$3\r\nabc\r\n",
    b"$-1\r\n",
    b"_\r\n",
    b"#t\r\n",
    b",1.5\r\n",
    b"(12\r\n",
    b"!9\r\nERR inner\r\n",
    b"=7\r\ntxt:abc\r\n",
    b"$?\r\n;1\r\na\r\n;0\r\n",
    b"*-1\r\n",
]


def _encode(argv: list[bytes]) -> bytes:
    return b"*%d\r\n" % len(argv) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in argv)


def _random_command(rng: random.Random) -> tuple[bytes, list[bytes]]:
    args = [
        rng.choice(_FUZZ_ARGS) if rng.random() < 0.6 else rng.randbytes(rng.randint(0, 8))
        for _ in range(rng.randint(0, 4))
    ]
    return rng.choice(_FUZZ_NAMES), args


def _random_reply(rng: random.Random, budget: int) -> tuple[bytes, int]:
    """A valid RESP2/RESP3 reply and its nesting depth."""
    if budget <= 0 or rng.random() < 0.4:
        return rng.choice(_REPLY_LEAVES), 0
    kind = rng.randrange(5)
    parts = [_random_reply(rng, budget - 1) for _ in range(rng.randint(1 if kind == 4 else 0, 3))]
    body = b"".join(p for p, _ in parts)
    depth = 1 + max((d for _, d in parts), default=0) if parts or kind == 2 else 0  # empty ones are leaves
    if kind == 0:
        return b"*%d\r\n" % len(parts) + body, depth
    if kind == 1:
        return b"~%d\r\n" % len(parts) + body, depth
    if kind == 2:
        return b"*?\r\n" + body + b".\r\n", depth
    if kind == 3:
        return b"%%%d\r\n" % len(parts) + body + body, depth
    return b"|1\r\n+ttl\r\n:1\r\n" + parts[0][0], max(1, parts[0][1])  # decorates at the same depth


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """Cut, flip, drop or insert bytes in a valid message."""
    if not data:
        return data
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(data) + 1)
        op = rng.randrange(4)
        if op == 0:
            data = data[:i]
        elif op == 1:
            data = data[:i] + bytes([rng.randrange(256)]) + data[i + 1 :]
        elif op == 2:
            data = data[:i] + data[i + 1 :]
        else:
            data = data[:i] + rng.randbytes(rng.randint(1, 4)) + data[i:]
    return data


@FUZZ
@given(st.integers(min_value=0, max_value=2**64))
def test_fuzz_structured_and_mutated(seed: int) -> None:
    rng = random.Random(seed)
    commands = [_random_command(rng) for _ in range(rng.randint(1, 6))]
    replies = [_random_reply(rng, 10) for _ in range(rng.randint(0, 4))]
    req = b"".join(_encode([name, *args]) for name, args in commands)
    resp = b"".join(r for r, _ in replies)

    # Whole valid replies parse to one summary each, complete unless nested past the parser's bound.
    for data, depth in replies:
        assert [r.complete for r in parse_replies(data)] == [depth <= 8]

    # Whole valid requests parse back to what was sent.
    parsed, truncated = parse_commands(req, limit=64)
    assert not truncated
    assert [c.name.split(" ")[0] for c in parsed] == [n.decode().upper() for n, _ in commands]
    assert [c.argc for c in parsed] == [len(args) + 1 for _, args in commands]

    # Cut anywhere, a request never shows a value: the secret sits past argv[3], where no key is read.
    secret = b"SECRETVALUE"
    with_secret = b"".join(_encode([name, *args, *[b"x"] * (3 - len(args)), secret]) for name, args in commands)
    cut = with_secret[: rng.randint(0, len(with_secret))]
    for capture_raw in (False, True):
        got = RedisSession(capture_raw=capture_raw).describe(cut, resp[:256], len(commands))
        assert got is None or "SECRET" not in (got.query_text or "")

    _check_all(_mutate(rng, req[:512]), _mutate(rng, resp[:256]), len(commands))
