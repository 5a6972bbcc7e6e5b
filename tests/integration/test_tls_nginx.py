"""HTTPS: nginx and curl both traced (SSL_read/SSL_write in libssl.so.3); nginx alone is in test_nginx.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.helpers import (
    CLIENT,
    CLIENTS,
    PYTHON,
    SERVER,
    STATUS_UNSET,
    PausedClient,
    assert_in_window,
    assert_summary,
    by_pid,
    curl,
    settle,
    wait_idle,
)
from tests.otlp_receiver import ReceivedSpan

pytestmark = pytest.mark.integration

N = 23
FAILS = 5


def curl_tls_args(ca: Path) -> list[str]:
    """curl options for the suite's HTTPS servers: verify against the test CA, HTTP/1.1 (no h2 via ALPN)."""
    return ["--http1.1", "--cacert", str(ca)]


def assert_nginx_server_span(s: ReceivedSpan, port: int) -> None:
    a = s.attributes
    assert s.kind == SERVER
    assert s.resource["service.name"] == "nginx"
    assert a["url.scheme"] == "https"
    assert a["otelbpf.tls.library"] == "openssl"
    assert a["http.request.method"] == "GET"
    assert a["server.port"] == port
    assert a["client.address"] == "127.0.0.1"
    assert isinstance(a["client.port"], int) and a["client.port"] > 0
    assert a["network.peer.address"] == "127.0.0.1"
    assert a["user_agent.original"].startswith("curl/")


def test_nginx_and_curl_both_traced(nginx_tls_server, tls_cert, otelbpf, receiver):
    """nginx by --pid, curl as the child of a traced paused wrapper: N SERVER + N CLIENT spans, paired."""
    port = nginx_tls_server.port
    url = nginx_tls_server.url("/static.txt")
    curl_argv = ["curl", "-s", "-S", "--max-time", "10", *curl_tls_args(tls_cert.cert)]
    curl_argv += ["-w", "%{http_code} %{num_connects}\n", *["-o", "/dev/null"] * N, *[url] * N]
    client = PausedClient(argv=[PYTHON, str(CLIENTS / "run_paused.py"), *curl_argv])
    try:
        run = otelbpf("--pid", str(nginx_tls_server.pid), "--pid", str(client.pid), receiver=receiver)
        t0 = time.time_ns()
        done = client.go()
        t1 = time.time_ns()
        settle(receiver, 2 * N)
        res = run.stop()
    finally:
        client.stop()

    assert done["returncode"] == 0, done["stderr"]
    lines = [line.split() for line in done["stdout"].splitlines()]
    assert [code for code, _ in lines] == ["200"] * N
    assert sum(int(connects) for _, connects in lines) == 1, "curl should reuse one connection"
    spans = receiver.spans()
    assert_summary(res, requests=2 * N, exported=2 * N)
    client_spans = by_pid(spans, done["pid"])
    server_spans = [s for s in spans if s.kind == SERVER]
    assert len(server_spans) == N and len(client_spans) == N, [(s.name, s.resource.get("process.pid")) for s in spans]
    for s in server_spans:
        assert_nginx_server_span(s, port)
        assert s.name == "GET /static.txt"
        assert s.attributes["url.path"] == "/static.txt"
        assert s.attributes["http.response.status_code"] == 200
    for s in client_spans:
        a = s.attributes
        assert s.kind == CLIENT
        assert s.name == "GET /static.txt"
        assert s.status_code == STATUS_UNSET
        assert s.resource["service.name"] == "curl"
        assert a["url.full"] == f"https://127.0.0.1:{port}/static.txt"
        assert a["otelbpf.tls.library"] == "openssl"
        assert a["http.request.method"] == "GET"
        assert a["http.response.status_code"] == 200
        assert a["server.address"] == "127.0.0.1"
        assert a["server.port"] == port
        assert a["network.peer.port"] == port
    ports = {s.attributes["client.port"] for s in server_spans}
    assert len(ports) == 1, ports
    assert {s.attributes["network.local.port"] for s in client_spans} == ports
    assert_in_window(spans, t0, t1)


def test_no_tls_leaves_https_untraced_and_ciphertext_unparsed(nginx_tls_server, tls_cert, otelbpf, receiver):
    """With --no-tls only the ciphertext is seen: no span, no request counted, nothing lost."""
    run = otelbpf("--pid", str(nginx_tls_server.pid), "--no-tls", receiver=receiver)
    out = curl(
        *curl_tls_args(tls_cert.cert),
        "-w",
        "%{http_code}\n",
        *["-o", "/dev/null"] * N,
        *[nginx_tls_server.url("/static.txt")] * N,
    )
    wait_idle(nginx_tls_server.pid)
    res = run.stop()
    assert out.stdout.split() == ["200"] * N
    assert receiver.spans() == []
    assert_summary(res, requests=0, exported=0)
    assert "TLS: attached" not in res.stderr
    assert "TLS uprobe hits" not in res.stderr
