"""Table-driven and fuzz tests for the HTTP/1.x request-head parser."""

from __future__ import annotations

import dataclasses
import random

import pytest

from otelbpf.protocols.http1 import (
    KNOWN_METHODS,
    HttpRequestHead,
    canonical_method,
    parse_request,
)

SECRET_AUTH = "Bearer s3cr3t-t0ken-AUTHZ"
SECRET_COOKIE = "session=c00kie-SECRET-value"

CURL_GET = (
    b"GET /api/v1/users/123?verbose=1&x=2 HTTP/1.1\r\n"
    b"Host: api.example.com:8080\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Accept: */*\r\n"
    b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"tracestate: congo=t61rcWkgMzE,rojo=00f067aa0ba902b7\r\n"
    b"Authorization: " + SECRET_AUTH.encode() + b"\r\n"
    b"Cookie: " + SECRET_COOKIE.encode() + b"\r\n"
    b"\r\n"
)

POST_BODY = b'{"password": "hunter2-BODY-SECRET"}'
POST = (
    b"POST /login HTTP/1.1\r\nHost: example.com\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(POST_BODY)).encode() + b"\r\n\r\n" + POST_BODY
)


def _fields(head: HttpRequestHead) -> dict[str, object]:
    return dataclasses.asdict(head)


# --- request line and header extraction -------------------------------------------------------------------


def test_curl_request_all_fields() -> None:
    head = parse_request(CURL_GET)
    assert head == HttpRequestHead(
        method="GET",
        target="/api/v1/users/123?verbose=1&x=2",
        path="/api/v1/users/123",
        query="verbose=1&x=2",
        version="1.1",
        host="api.example.com:8080",
        user_agent="curl/8.5.0",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        tracestate="congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        content_length=None,
        chunked=False,
        complete=True,
    )


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # Keep-alive style requests as sent by common clients.
        (
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n",
            {"method": "GET", "path": "/", "query": None, "host": "localhost", "version": "1.1"},
        ),
        (
            b"HEAD /healthz HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
            {"method": "HEAD", "path": "/healthz", "version": "1.0", "host": None, "complete": True},
        ),
        (
            b"DELETE /items/7 HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
            {"method": "DELETE", "content_length": 0},
        ),
        (
            b"PUT /f HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            {"method": "PUT", "chunked": True, "content_length": None},
        ),
        (
            b"POST /f HTTP/1.1\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n",
            {"chunked": True},
        ),
        (b"POST /f HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", {"chunked": False}),
        (b"POST /f HTTP/1.1\r\nTransfer-Encoding: notchunked\r\n\r\n", {"chunked": False}),
        (b"POST /f HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", {"chunked": False}),
        (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", {"method": "OPTIONS", "path": "*", "target": "*"}),
        (
            b"CONNECT db.internal:5432 HTTP/1.1\r\n\r\n",
            {"method": "CONNECT", "path": "", "host": "db.internal:5432", "target": "db.internal:5432"},
        ),
        (
            b"CONNECT db.internal:5432 HTTP/1.1\r\nHost: proxy-host\r\n\r\n",
            {"host": "proxy-host", "path": ""},
        ),
        (b"TRACE /t HTTP/1.1\r\n\r\n", {"method": "TRACE"}),
        (b"PATCH /p HTTP/1.1\r\n\r\n", {"method": "PATCH"}),
        # Extension methods are accepted (canonical_method maps them to _OTHER).
        (b"PROPFIND /dav/ HTTP/1.1\r\nDepth: 1\r\n\r\n", {"method": "PROPFIND", "path": "/dav/"}),
        (b"VERSION-CONTROL /dav/x HTTP/1.1\r\n\r\n", {"method": "VERSION-CONTROL"}),
        # Missing Host header.
        (b"GET /nohost HTTP/1.1\r\nAccept: */*\r\n\r\n", {"host": None, "complete": True}),
        # No headers at all.
        (b"GET /bare HTTP/1.0\r\n\r\n", {"host": None, "user_agent": None, "complete": True}),
        # Header name case and optional whitespace.
        (
            b"GET / HTTP/1.1\r\nhOsT:   MiXeD.example  \r\nUSER-AGENT:\tUA/1\t\r\nTRACEPARENT: tp\r\n\r\n",
            {"host": "MiXeD.example", "user_agent": "UA/1", "traceparent": "tp"},
        ),
        (b"GET / HTTP/1.1\r\nHost:h\r\n\r\n", {"host": "h"}),
        # The first of duplicate headers wins.
        (b"GET / HTTP/1.1\r\nHost: first\r\nHost: second\r\n\r\n", {"host": "first"}),
        # Empty values are reported as absent.
        (b"GET / HTTP/1.1\r\nHost: \r\nUser-Agent:\r\n\r\n", {"host": None, "user_agent": None}),
        # Bare LF line endings, and mixed endings.
        (
            b"GET /lf?a=b HTTP/1.1\nHost: lf.example\nUser-Agent: ua\n\nBODY",
            {"path": "/lf", "query": "a=b", "host": "lf.example", "user_agent": "ua", "complete": True},
        ),
        (b"GET /mix HTTP/1.1\nHost: m\r\n\r\n", {"host": "m", "complete": True}),
        (b"GET /mix HTTP/1.1\r\nHost: m\n\n", {"host": "m", "complete": True}),
        # Malformed header lines are skipped, the valid ones still used.
        (
            b"GET / HTTP/1.1\r\nno colon here\r\nHost : spaced\r\n: empty-name\r\nX-Forwarded-Host: xf\r\n"
            b"User-Agent: ok\r\n\r\n",
            {"host": None, "user_agent": "ok"},
        ),
        # Header names only match whole names at a line start.
        (
            b"GET / HTTP/1.1\r\nX-Host: nope\r\nMy-User-Agent: nope\r\n\r\n",
            {"host": None, "user_agent": None},
        ),
        # Content-Length must be plain digits.
        (b"POST / HTTP/1.1\r\nContent-Length: 12abc\r\n\r\n", {"content_length": None}),
        (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", {"content_length": None}),
        (b"POST / HTTP/1.1\r\ncontent-length:  42 \r\n\r\n", {"content_length": 42}),
        (b"POST / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", {"content_length": None}),
        # Leading empty lines before the request line are tolerated (RFC 9112 §2.2).
        (b"\r\nGET /after-crlf HTTP/1.1\r\n\r\n", {"path": "/after-crlf"}),
    ],
)
def test_request_table(data: bytes, expected: dict[str, object]) -> None:
    head = parse_request(data)
    assert head is not None
    fields = _fields(head)
    for key, value in expected.items():
        assert fields[key] == value, key


@pytest.mark.parametrize(
    ("target", "path", "query"),
    [
        ("/", "/", None),
        ("/a/b", "/a/b", None),
        ("/a?", "/a", ""),
        ("/a?x=1", "/a", "x=1"),
        ("/a?x=1&y=2?z", "/a", "x=1&y=2?z"),
        ("/a?x=1#frag", "/a", "x=1"),
        ("/a#frag?notquery", "/a", None),
        ("/?q", "/", "q"),
        ("/search?q=%20a+b", "/search", "q=%20a+b"),
    ],
)
def test_query_handling(target: str, path: str, query: str | None) -> None:
    head = parse_request(b"GET " + target.encode() + b" HTTP/1.1\r\nHost: h\r\n\r\n")
    assert head is not None
    assert (head.target, head.path, head.query) == (target, path, query)


@pytest.mark.parametrize(
    ("target", "path", "query", "host", "raw"),
    [
        ("http://example.com/p?q=1", "/p", "q=1", "example.com", "http://example.com/p?q=1"),
        ("http://example.com:8080/a/b", "/a/b", None, "example.com:8080", "http://example.com:8080/a/b"),
        ("HTTPS://Example.com", "/", None, "Example.com", "HTTPS://Example.com"),
        ("http://example.com?x", "/", "x", "example.com", "http://example.com?x"),
        ("http://example.com#f", "/", None, "example.com", "http://example.com#f"),
        ("http://[::1]:80/v6", "/v6", None, "[::1]:80", "http://[::1]:80/v6"),
        # Credentials in the URL are redacted, never kept.
        ("http://user:pw@h.example/x", "/x", None, "h.example", "http://REDACTED:REDACTED@h.example/x"),
        ("http://tok@h.example/", "/", None, "h.example", "http://REDACTED@h.example/"),
        # An empty authority falls back to the Host header.
        ("http:///p", "/p", None, "header.example", "http:///p"),
    ],
)
def test_absolute_form(target: str, path: str, query: str | None, host: str, raw: str) -> None:
    data = b"GET " + target.encode() + b" HTTP/1.1\r\nHost: header.example\r\n\r\n"
    head = parse_request(data)
    assert head is not None
    assert (head.path, head.query, head.host, head.target) == (path, query, host, raw)
    assert "pw" not in repr(head) and "tok@" not in repr(head)


def test_control_characters_are_stripped() -> None:
    data = (
        b"GET /a\x00b\x1bc?x=\x7fy HTTP/1.1\r\n"
        b"Host: ex\x00am\x1b[31mple\r\n"
        b"User-Agent: evil\x08\x07agent\x0b\r\n"
        b"traceparent: \x0000-abc\r\n\r\n"
    )
    head = parse_request(data)
    assert head is not None
    assert head.target == "/abc?x=y"
    assert head.path == "/abc"
    assert head.host == "exam[31mple"
    assert head.user_agent == "evilagent"
    assert head.traceparent == "00-abc"
    for value in (head.target, head.host, head.user_agent, head.traceparent):
        assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in value)


def test_latin1_is_lossless() -> None:
    head = parse_request(b"GET /caf\xc3\xa9 HTTP/1.1\r\nUser-Agent: \xff\xfe\r\n\r\n")
    assert head is not None
    assert head.path.encode("latin-1") == b"/caf\xc3\xa9"
    assert head.user_agent == "\xff\xfe"


@pytest.mark.parametrize(
    "data",
    [
        CURL_GET,
        POST,
        b"GET / HTTP/1.1\nAuthorization: "
        + SECRET_AUTH.encode()
        + b"\nCookie: "
        + SECRET_COOKIE.encode()
        + b"\n\n",
        # Truncated right inside the secret header values.
        CURL_GET[: CURL_GET.index(b"s3cr3t") + 3],
        CURL_GET[: CURL_GET.index(b"SECRET") + 2],
    ],
)
def test_secret_headers_and_body_never_returned(data: bytes) -> None:
    head = parse_request(data)
    assert head is not None
    text = repr(head) + repr(_fields(head))
    for secret in (SECRET_AUTH, SECRET_COOKIE, "s3cr3t", "c00kie", "SECRET", "hunter2", "password", "Cookie"):
        assert secret not in text


def test_body_is_never_returned() -> None:
    head = parse_request(POST)
    assert head is not None
    assert head.content_length == len(POST_BODY)
    assert head.complete
    assert "hunter2" not in repr(head)


def test_body_that_looks_like_headers_is_ignored() -> None:
    # A body line starting with "Host:" must not be read as a header.
    data = b"POST /x HTTP/1.1\r\nContent-Length: 30\r\n\r\nHost: body.example\r\nUser-Agent: b\r\n"
    head = parse_request(data)
    assert head is not None
    assert head.host is None and head.user_agent is None


# --- truncation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sample", [CURL_GET, POST, b"GET /lf HTTP/1.1\nHost: h\nUser-Agent: u\n\n"])
def test_truncated_at_every_offset(sample: bytes) -> None:
    full = parse_request(sample)
    assert full is not None and full.complete
    method_end = sample.index(b" ")
    line_end = sample.index(b"\n")
    for cut in range(len(sample) + 1):
        head = parse_request(sample[:cut])
        if head is None:
            # Only a capture that has not yet reached the first target byte may be unrecognisable.
            assert cut <= method_end + 1, cut
            continue
        assert head.method == full.method, cut
        assert full.target.startswith(head.target), cut
        assert full.path.startswith(head.path), cut
        assert head.version in ("", full.version), cut
        if cut <= line_end:
            # The request line itself is cut: no headers are known yet.
            assert not head.complete and head.host is None, cut
        for name in ("host", "user_agent", "traceparent", "tracestate", "content_length"):
            # A header is either absent or fully right; never a cut-off value.
            assert getattr(head, name) in (None, getattr(full, name)), (cut, name)
        assert head.complete == (head == full), cut


def test_truncated_request_line_shape() -> None:
    assert parse_request(b"GE") is None
    assert parse_request(b"GET") is None
    assert parse_request(b"GET ") is None
    head = parse_request(b"GET /very/long/pa")
    assert head is not None
    assert (head.method, head.target, head.path, head.version, head.complete) == (
        "GET",
        "/very/long/pa",
        "/very/long/pa",
        "",
        False,
    )
    head = parse_request(b"GET /x?q=1 HTT")
    assert head is not None and (head.path, head.query, head.version) == ("/x", "q=1", "")
    head = parse_request(b"GET /x HTTP/1.1\r")
    assert head is not None and (head.version, head.complete) == ("1.1", False)
    # The version being cut short is fine; a wrong one is not.
    assert parse_request(b"GET /x HTTP/2") is None
    assert parse_request(b"GET /x FOO") is None
    # Without the version suffix an unknown method is not trusted.
    assert parse_request(b"FROB /x") is None
    # A partial absolute-form URL is only used once it has its "://".
    assert parse_request(b"GET htt") is None
    head = parse_request(b"GET http://exa")
    assert head is not None and head.host == "exa"


def test_truncated_inside_headers_keeps_whole_lines() -> None:
    head = parse_request(b"GET / HTTP/1.1\r\nHost: h.example\r\nUser-Agent: cur")
    assert head is not None
    assert (head.host, head.user_agent, head.complete) == ("h.example", None, False)
    head = parse_request(b"POST / HTTP/1.1\r\nContent-Length: 1")
    assert head is not None and head.content_length is None


# --- not HTTP --------------------------------------------------------------------------------------------

TLS_CLIENT_HELLO = bytes.fromhex(
    "16030100f8010000f40303" + "ab" * 32 + "20" + "cd" * 32 + "0008130213031301c02f0100"
    "00a30000000f000d00000a6578616d706c652e636f6d"
)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        TLS_CLIENT_HELLO,
        b"*1\r\n$4\r\nPING\r\n",
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n",
        b"PING\r\n",
        b"SET /key value\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"get / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.2\r\n\r\n",
        b"GET / HTTP/1.1 \r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET /a b HTTP/1.1\r\n\r\n",
        b"GET HTTP/1.1\r\n\r\n",
        b"G3T / HTTP/1.1\r\n\r\n",
        b"-GET / HTTP/1.1\r\n\r\n",
        b"AVERYVERYLONGMETHODNAMEX / HTTP/1.1\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16/",  # PostgreSQL SSLRequest
        b"EHLO mail.example.com\r\n",
        b"MAIL FROM:<a@b> HTTP/1.1x\r\n",
    ],
)
def test_not_http_returns_none(data: bytes) -> None:
    assert parse_request(data) is None


def test_random_binary_garbage_returns_none() -> None:
    rng = random.Random(1234)
    for _ in range(2000):
        data = rng.randbytes(rng.randrange(1, 300))
        assert parse_request(data) is None


# --- offsets and pipelining ------------------------------------------------------------------------------


def test_offset_parameter() -> None:
    data = b"garbage" + CURL_GET
    assert parse_request(data) is None
    head = parse_request(data, 7)
    assert head is not None and head.host == "api.example.com:8080"
    assert parse_request(data, len(data)) is None
    assert parse_request(data, len(data) + 5) is None
    assert parse_request(data, -1) is None


def test_pipelined_three_gets() -> None:
    """The kernel hands over where each pipelined request starts (req_offset); each parses there."""
    reqs = [f"GET /item/{i} HTTP/1.1\r\nHost: h{i}\r\n\r\n".encode() for i in range(3)]
    data = b"".join(reqs)
    offsets = [0, len(reqs[0]), len(reqs[0]) + len(reqs[1])]
    heads = [parse_request(data, off) for off in offsets]
    assert [(h.path, h.host) for h in heads if h] == [("/item/0", "h0"), ("/item/1", "h1"), ("/item/2", "h2")]


def test_pipelined_post_with_body_then_get() -> None:
    data = POST + b"GET /next HTTP/1.1\r\nHost: n\r\n\r\n"
    first = parse_request(data)
    assert first is not None and first.method == "POST" and first.path == "/login"
    second = parse_request(data, len(POST))
    assert second is not None and (second.method, second.path, second.host) == ("GET", "/next", "n")


def test_pipelined_bare_lf_and_stray_crlf() -> None:
    """A stray CRLF before a request line is tolerated (RFC 9112 section 2.2)."""
    data = b"POST /a HTTP/1.1\nContent-Length: 2\n\nhi\r\nGET /b HTTP/1.1\n\n"
    head = parse_request(data, data.index(b"\r\nGET"))
    assert head is not None and head.path == "/b"


# --- methods -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "expected"),
    [(m, m) for m in sorted(KNOWN_METHODS)]
    + [("PROPFIND", "_OTHER"), ("get", "_OTHER"), ("", "_OTHER"), ("QUERY", "_OTHER")],
)
def test_canonical_method(method: str, expected: str) -> None:
    assert canonical_method(method) == expected


# --- fuzz ------------------------------------------------------------------------------------------------


def test_fuzz_never_raises() -> None:
    rng = random.Random(20240501)
    seeds = [CURL_GET, POST, b"GET /lf HTTP/1.1\nHost: h\n\n", b"GET http://u:p@h/x HTTP/1.0\r\n\r\n"]
    alphabet = b"GETPOST /:?#@\r\n HTTP/1.01Hhost-length\x00\xff"
    for i in range(20_000):
        kind = i % 4
        if kind == 0:
            data = rng.randbytes(rng.randrange(0, 200))
        elif kind == 1:
            data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 120)))
        else:
            # Mutate a real request: flip, insert or delete a few bytes, then maybe truncate it.
            buf = bytearray(rng.choice(seeds))
            for _ in range(rng.randrange(1, 6)):
                pos = rng.randrange(len(buf) + 1)
                op = rng.randrange(3)
                if op == 0 and pos < len(buf):
                    buf[pos] = rng.randrange(256)
                elif op == 1:
                    buf.insert(pos, rng.choice(alphabet))
                elif pos < len(buf):
                    del buf[pos]
            data = bytes(buf[: rng.randrange(len(buf) + 1)]) if kind == 3 else bytes(buf)
        offset = rng.randrange(-2, len(data) + 3)
        for off in (0, offset):
            head = parse_request(data, off)
            if head is not None:
                assert head.method and head.method.isupper()
                assert head.version in ("", "1.0", "1.1")
                assert head.content_length is None or head.content_length >= 0
