"""SERVER spans of nginx (master pid given; the worker is its child): recvfrom/writev, or SSL_read/SSL_write."""

from __future__ import annotations

import time

import psutil
import pytest

from tests.integration.conftest import STATIC_FILES
from tests.integration.helpers import (
    SERVER,
    STATUS_ERROR,
    STATUS_UNSET,
    assert_in_window,
    assert_summary,
    curl,
    raw_client,
    settle,
)

pytestmark = pytest.mark.integration

N = 23
FAILS = 5


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_nginx_keepalive_static_and_500(request, scheme, otelbpf, receiver):
    """N static files and FAILS 500s from one curl over one keep-alive connection (one TLS session for https)."""
    if scheme == "https":
        server = request.getfixturevalue("nginx_tls_server")
        # Verify against the test CA; HTTP/1.1 so ALPN cannot pick h2.
        tls = ["--http1.1", "--cacert", str(request.getfixturevalue("tls_cert").cert)]
    else:
        server, tls = request.getfixturevalue("nginx_server"), []
    workers = {p.pid for p in psutil.Process(server.pid).children()}
    run = otelbpf("--pid", str(server.pid), receiver=receiver)
    t0 = time.time_ns()
    # One curl invocation, several URLs: one keep-alive connection.
    out = curl(*tls, "-w", "%{http_code} %{num_connects}\n", *["-o", "/dev/null"] * N, *[server.url("/static.txt")] * N)
    fails = curl(*tls, "-w", "%{http_code}\n", *["-o", "/dev/null"] * FAILS, *[server.url("/fail")] * FAILS)
    t1 = time.time_ns()
    settle(receiver, N + FAILS)
    res = run.stop()

    lines = [line.split() for line in out.stdout.splitlines()]
    assert [code for code, _ in lines] == ["200"] * N
    assert sum(int(connects) for _, connects in lines) == 1, "curl should reuse one connection"
    assert fails.stdout.split() == ["500"] * FAILS
    spans = receiver.spans()
    assert_summary(res, requests=N + FAILS, exported=N + FAILS)
    assert len(spans) == N + FAILS, [s.name for s in spans]
    ok = [s for s in spans if s.attributes.get("url.path") == "/static.txt"]
    bad = [s for s in spans if s.attributes.get("url.path") == "/fail"]
    assert len(ok) == N and len(bad) == FAILS
    for s in spans:
        a = s.attributes
        assert s.kind == SERVER
        assert s.resource["service.name"] == "nginx"
        assert s.resource["process.pid"] in workers
        assert a["url.scheme"] == scheme
        assert a.get("otelbpf.tls.library") == ("openssl" if tls else None)
        assert a["http.request.method"] == "GET"
        assert a["server.port"] == server.port
        assert a["client.address"] == "127.0.0.1"
        assert a["network.peer.address"] == "127.0.0.1"
        assert a["user_agent.original"].startswith("curl/")
    for s in ok:
        assert s.name == "GET /static.txt"
        assert s.attributes["http.response.status_code"] == 200
        assert s.status_code == STATUS_UNSET
        assert "error.type" not in s.attributes
        assert s.attributes["http.response.size"] > len(STATIC_FILES["static.txt"])
    assert len({s.attributes["client.port"] for s in ok}) == 1
    for s in bad:
        assert s.name == "GET /fail"
        assert s.attributes["http.response.status_code"] == 500
        assert s.status_code == STATUS_ERROR
        assert s.attributes["error.type"] == "500"
    assert_in_window(spans, t0, t1)


def test_nginx_pipelined_requests(nginx_server, otelbpf, receiver):
    """Three GETs in one send on one connection; nginx answers them in order."""
    paths = ["/one.txt", "/two.txt", "/three.txt"]
    run = otelbpf("--pid", str(nginx_server.pid), receiver=receiver)
    out = raw_client("pipeline", str(nginx_server.port), *paths)
    settle(receiver, 3)
    res = run.stop()
    assert out["statuses"] == [200, 200, 200]
    spans = receiver.spans()
    got = sorted((s.attributes.get("url.path"), s.attributes.get("http.response.status_code")) for s in spans)
    assert got == sorted((p, 200) for p in paths), res.stderr
    assert_summary(res, requests=3, exported=3)
    for s in spans:
        assert s.status_code == STATUS_UNSET
        assert s.end_ns >= s.start_ns
