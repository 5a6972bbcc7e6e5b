"""SERVER spans of a python http.server app traced by --pid, driven by curl and by client subprocesses.

The span rules (split and chunked bodies, POST bodies, secrets, status rules, a connection closed
mid-request) run over plain HTTP and over TLS alike: the ``app`` fixture gives either.
"""

from __future__ import annotations

import concurrent.futures
import socket
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.helpers import (
    CLIENT,
    CLIENTS,
    PYTHON,
    SERVER,
    STATUS_ERROR,
    STATUS_UNSET,
    PausedClient,
    Server,
    all_values,
    assert_in_window,
    assert_summary,
    by_pid,
    curl,
    exe_of,
    raw_client,
    run_both_traced,
    settle,
    wait_idle,
)

pytestmark = pytest.mark.integration

N = 23


@dataclass
class App:
    """servers/app.py over one scheme, and how curl and the python client reach it."""

    server: Server
    curl: list[str]  # extra curl options
    ca: Path | None = None

    def client(self, mode: str, urls: list[str]) -> PausedClient:
        ca = ["--ca", str(self.ca)] if self.ca else []
        return PausedClient(argv=[PYTHON, str(CLIENTS / "http_client.py"), *ca, mode, *urls])


@pytest.fixture(params=["http", "https"])
def app(request: pytest.FixtureRequest) -> App:
    if request.param == "https":
        cert = request.getfixturevalue("tls_cert").cert
        # Verify against the test CA; HTTP/1.1 so ALPN cannot pick h2.
        return App(request.getfixturevalue("py_tls_server"), ["--http1.1", "--cacert", str(cert)], cert)
    return App(request.getfixturevalue("py_server"), [])


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_sequential_curl_requests(py_server, otelbpf, receiver, protocol):
    run = otelbpf("--pid", str(py_server.pid), receiver=receiver, protocol=protocol)
    t0 = time.time_ns()
    for i in range(N):
        curl("-o", "/dev/null", py_server.url(f"/items/{i}"))  # a new connection each time
    t1 = time.time_ns()
    settle(receiver, N)
    res = run.stop()
    spans = receiver.spans()

    assert_summary(res, requests=N, exported=N)
    assert len(spans) == N, [s.name for s in spans]
    exe, service = exe_of(py_server.pid)
    assert sorted(s.attributes["url.path"] for s in spans) == sorted(f"/items/{i}" for i in range(N))
    for s in spans:
        assert s.protocol == ("grpc" if protocol == "grpc" else "http")
        assert s.name == "GET /items/{id}"
        assert s.kind == SERVER
        assert s.status_code == STATUS_UNSET
        a = s.attributes
        assert a["http.request.method"] == "GET"
        assert a["url.scheme"] == "http"
        assert a["http.response.status_code"] == 200
        assert a["network.protocol.version"] == "1.1"
        assert a["server.address"] == "127.0.0.1"
        assert a["server.port"] == py_server.port
        assert a["client.address"] == "127.0.0.1"
        assert isinstance(a["client.port"], int) and a["client.port"] > 0
        assert a["network.peer.address"] == "127.0.0.1"
        assert a["user_agent.original"].startswith("curl/")
        assert "error.type" not in a
        r = s.resource
        assert r["service.name"] == service
        assert r["process.pid"] == py_server.pid
        assert r["process.executable.path"] == exe
        assert "app.py" in r["process.command_line"]
        assert r["host.name"] == socket.gethostname()
        assert r["telemetry.sdk.name"] == "otelbpf"
    assert len({s.attributes["client.port"] for s in spans}) == N  # one connection per request
    assert_in_window(spans, t0, t1)


def test_keepalive_session(py_server, otelbpf, receiver):
    """requests.Session: N requests over one connection; both ends traced."""
    client = PausedClient("session", [py_server.url(f"/items/{i}") for i in range(N)])
    results, spans, res, t0, t1 = run_both_traced(py_server, client, otelbpf, receiver, 2 * N)
    assert [r["status"] for r in results] == [200] * N
    assert_summary(res, requests=2 * N, exported=2 * N)
    server_spans = by_pid(spans, py_server.pid)
    client_spans = by_pid(spans, client.pid)
    assert len(server_spans) == N and len(client_spans) == N, [(s.name, s.resource["process.pid"]) for s in spans]
    assert {s.kind for s in server_spans} == {SERVER}
    assert {s.kind for s in client_spans} == {CLIENT}
    ports = {s.attributes["client.port"] for s in server_spans}
    assert len(ports) == 1, ports
    assert {s.attributes["network.local.port"] for s in client_spans} == ports
    for group in (server_spans, client_spans):
        assert sorted(s.attributes["url.path"] for s in group) == sorted(f"/items/{i}" for i in range(N))
        assert {s.name for s in group} == {"GET /items/{id}"}
        assert {s.attributes["http.response.status_code"] for s in group} == {200}
        assert {s.status_code for s in group} == {STATUS_UNSET}
    assert {s.attributes["user_agent.original"].split("/")[0] for s in server_spans} == {"python-requests"}
    assert_in_window(spans, t0, t1)


def test_a_response_head_longer_than_the_capture_is_still_delimited(py_server, otelbpf, receiver):
    """A 4 KiB head with Content-Length at its end, on a keep-alive connection that stays open: every span
    must end when its response does, not when the next request or the close comes."""
    client = PausedClient("session", [py_server.url("/bighead") for _ in range(N)])
    try:
        run = otelbpf("--pid", str(py_server.pid), receiver=receiver)
        results = client.go()
        assert [r["status"] for r in results] == [200] * N
        settle(receiver, N)  # the connection is still open: only delimited responses have spans yet
        res = run.stop()
    finally:
        client.stop()
    spans = by_pid(receiver.spans(), py_server.pid)
    assert len(spans) == N
    for s in spans:
        assert s.name == "GET /bighead"
        assert s.attributes["http.response.status_code"] == 200
        assert s.attributes["http.response.size"] > 3500
        assert s.status_code == STATUS_UNSET
    assert_summary(res, requests=N, exported=N)


def test_requests_evicted_in_flight_from_a_full_connection_table_are_counted_as_lost(py_server, otelbpf, receiver):
    """A connection table of 8 entries and 47 connections each waiting on /slow at once: the states the LRU
    table evicts take their requests with them, and every one of those is counted as lost."""
    run = otelbpf("--pid", str(py_server.pid), "--max-connections", "8", receiver=receiver)

    def fetch(_: int) -> bytes:
        with urllib.request.urlopen(py_server.url("/slow"), timeout=10) as resp:
            return resp.read()

    with concurrent.futures.ThreadPoolExecutor(47) as pool:
        assert list(pool.map(fetch, range(47))) == [b"slow\n"] * 47
    wait_idle(py_server.pid)
    res = run.stop()
    assert res.returncode == 0, res.stderr
    s = res.summary
    evicted = s["evicted in flight (connection table full)"]
    assert evicted > 0, res.stderr
    assert s["spans exported"] + evicted == s["requests seen"], res.stderr
    assert s["events lost"] == evicted
    assert s.get("requests unfinished at exit", 0) == 0
    assert len(receiver.spans()) == s["spans exported"]


def test_chunked_and_split_responses(app, otelbpf, receiver, tmp_path):
    """Bodies written in several writes; http.response.size is every byte of the response, as curl got them."""
    run = otelbpf("--pid", str(app.server.pid), receiver=receiver)
    sizes: dict[str, list[int]] = {"/chunked": [], "/split": []}
    body_file = tmp_path / "body"
    t0 = time.time_ns()
    for path in ("/chunked", "/split") * 3:
        # --raw keeps the chunk framing in the saved body (curl's size_download would count decoded bytes).
        out = curl(*app.curl, "--raw", "-o", str(body_file), "-w", "%{http_code} %{size_header}", app.server.url(path))
        code, header = (int(x) for x in out.stdout.split())
        assert code == 200
        sizes[path].append(header + body_file.stat().st_size)
    t1 = time.time_ns()
    settle(receiver, 6)
    res = run.stop()
    spans = receiver.spans()
    assert_summary(res, requests=6, exported=6)
    assert len(spans) == 6, [s.name for s in spans]
    for path in ("/chunked", "/split"):
        got = [s for s in spans if s.attributes.get("url.path") == path]
        assert len(got) == 3, path
        for s in got:
            assert s.name == f"GET {path}"
            assert s.kind == SERVER
            assert s.status_code == STATUS_UNSET
            assert s.attributes["http.response.status_code"] == 200
            assert s.attributes["url.scheme"] == app.server.scheme
            assert s.end_ns > s.start_ns
        assert sorted(s.attributes["http.response.size"] for s in got) == sorted(sizes[path]), path
    assert_in_window(spans, t0, t1)


def test_request_head_read_in_pieces(py_server, otelbpf, receiver):
    run = otelbpf("--pid", str(py_server.pid), receiver=receiver)
    out = raw_client("pieces", str(py_server.port), "/items/7")
    settle(receiver, 1)
    res = run.stop()
    assert out["status"] == 200
    spans = receiver.spans()
    assert_summary(res, requests=1, exported=1)
    assert len(spans) == 1
    (s,) = spans
    assert s.name == "GET /items/{id}"
    assert s.attributes["url.path"] == "/items/7"
    assert s.attributes["user_agent.original"] == "raw-client/1"
    assert s.attributes["http.request.size"] == out["sent"]
    assert s.attributes["http.response.size"] == out["response_size"]
    assert s.attributes["http.response.status_code"] == 200


SECRET = "SECRET-MARKER-5d1f"


def test_post_body_and_secrets_not_exported(app, otelbpf, receiver):
    body = f"password={SECRET}&x=1"
    run = otelbpf("--pid", str(app.server.pid), receiver=receiver)
    out = curl(
        *app.curl,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{size_request} %{size_upload}",
        "-H",
        f"Authorization: Bearer {SECRET}",
        "-d",
        body,
        app.server.url(f"/items/1?token={SECRET}"),
    )
    settle(receiver, 1)
    res = run.stop()
    code, size_request, size_upload = (int(x) for x in out.stdout.split())
    assert code == 200 and size_upload == len(body)
    spans = receiver.spans()
    assert_summary(res, requests=1, exported=1)
    assert len(spans) == 1
    (s,) = spans
    assert s.name == "POST /items/{id}"
    assert s.attributes["http.request.method"] == "POST"
    assert s.attributes["url.path"] == "/items/1"
    assert s.attributes["url.scheme"] == app.server.scheme
    assert s.attributes["http.request.size"] >= len(body)
    assert s.attributes["http.request.size"] == size_request  # curl's count includes the body
    assert "url.query" not in s.attributes
    leaked = [v for v in all_values(s) if SECRET in v]
    assert leaked == []


def test_server_status_rules(app, otelbpf, receiver):
    """Servers: 5xx is an error, 4xx is not; /slow lasts at least its 50 ms sleep."""
    run = otelbpf("--pid", str(app.server.pid), receiver=receiver)
    for path, code in (("/error", 500), ("/missing", 404), ("/slow", 200)):
        out = curl(*app.curl, "-o", "/dev/null", "-w", "%{http_code}", app.server.url(path))
        assert int(out.stdout) == code
    settle(receiver, 3)
    res = run.stop()
    spans = {s.attributes["url.path"]: s for s in receiver.spans()}
    assert_summary(res, requests=3, exported=3)
    assert sorted(spans) == ["/error", "/missing", "/slow"]
    err, missing, slow = spans["/error"], spans["/missing"], spans["/slow"]
    assert err.attributes["http.response.status_code"] == 500
    assert err.status_code == STATUS_ERROR
    assert err.attributes["error.type"] == "500"
    assert missing.attributes["http.response.status_code"] == 404
    assert missing.status_code == STATUS_UNSET
    assert "error.type" not in missing.attributes
    assert slow.status_code == STATUS_UNSET
    assert slow.end_ns - slow.start_ns >= 50_000_000


def test_connection_closed_without_response(app, otelbpf, receiver):
    """/close reads the request and hangs up: an ERROR span on the server and on the client."""
    client = app.client("urllib", [app.server.url("/close")])
    try:
        run = otelbpf("--pid", str(app.server.pid), "--pid", str(client.pid), receiver=receiver)
        results = client.go()
        settle(receiver, 2)
        res = run.stop()
    finally:
        client.stop()
    assert results[0]["status"] is None and results[0]["error"], results
    spans = receiver.spans()
    assert_summary(res, requests=2, exported=2)
    server = by_pid(spans, app.server.pid)
    clients = by_pid(spans, client.pid)
    assert len(server) == 1 and len(clients) == 1, [(s.name, s.resource.get("process.pid")) for s in spans]
    for s, kind in ((server[0], SERVER), (clients[0], CLIENT)):
        assert s.kind == kind
        assert s.name == "GET /close"
        assert s.status_code == STATUS_ERROR
        assert "http.response.status_code" not in s.attributes
        assert s.attributes["error.type"] == "connection_closed"
        assert s.attributes["url.scheme"] == app.server.scheme
        assert s.end_ns >= s.start_ns


def test_traceparent_from_an_sdk_caller_is_continued(app, otelbpf, receiver):
    """Each request from an OTel-SDK caller joins the caller's trace under the span it was sent from."""
    paths = [f"/items/{i}" for i in range(5)]
    ca = ["--ca", str(app.ca)] if app.ca else []
    argv = [PYTHON, str(CLIENTS / "sdk_caller.py"), *ca, *[app.server.url(p) for p in paths]]
    client = PausedClient(argv=argv)
    try:
        run = otelbpf("--pid", str(app.server.pid), receiver=receiver)
        caller = client.go()
        settle(receiver, len(paths) + 1)
        res = run.stop()
    finally:
        client.stop()
    assert [c["status"] for c in caller["spans"]] == [200] * len(paths)
    assert_summary(res, requests=len(paths) + 1, exported=len(paths) + 1)
    assert res.summary.get("invalid traceparent headers (new trace started)") == 1, res.stderr
    spans = receiver.spans()
    parent_of = {c["url"].split(str(app.server.port), 1)[1]: c["span_id"] for c in caller["spans"]}
    joined = [s for s in spans if s.parent_span_id]
    assert len(joined) == len(paths)
    for s in joined:
        assert s.kind == SERVER
        assert s.trace_id == caller["trace_id"]
        assert s.parent_span_id == parent_of[s.attributes["url.path"]]
        assert s.trace_state == "vendor=42"
        assert s.attributes["otelbpf.parent.source"] == "traceparent"
        assert s.attributes["url.scheme"] == app.server.scheme
    (fresh,) = [s for s in spans if not s.parent_span_id]  # the malformed header: a trace of its own
    assert fresh.trace_id != caller["trace_id"]
    assert "otelbpf.parent.source" not in fresh.attributes
