"""HTTPS between python processes: app.py over TLS and python clients, both ends traced (SSL_*_ex in libssl)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.helpers import (
    CLIENT,
    CLIENTS,
    PYTHON,
    SERVER,
    STATUS_UNSET,
    PausedClient,
    all_values,
    assert_in_window,
    assert_summary,
    by_pid,
    run_both_traced,
)
from tests.otlp_receiver import ReceivedSpan

pytestmark = pytest.mark.integration

N = 13


def https_client(mode: str, urls: list[str], ca: Path) -> PausedClient:
    """clients/http_client.py in ``mode`` (urllib|session), trusting the test CA."""
    return PausedClient(argv=[PYTHON, str(CLIENTS / "http_client.py"), "--ca", str(ca), mode, *urls])


def assert_https_pair(server_spans: list[ReceivedSpan], client_spans: list[ReceivedSpan], port: int) -> None:
    """Both ends of N GET /items/<i> requests over TLS, with the attributes each side must carry."""
    assert {s.kind for s in server_spans} == {SERVER}
    assert {s.kind for s in client_spans} == {CLIENT}
    for group in (server_spans, client_spans):
        assert sorted(s.attributes["url.path"] for s in group) == sorted(f"/items/{i}" for i in range(N))
        assert {s.name for s in group} == {"GET /items/{id}"}
        assert {s.attributes["http.response.status_code"] for s in group} == {200}
        assert {s.status_code for s in group} == {STATUS_UNSET}
        assert {s.attributes["otelbpf.tls.library"] for s in group} == {"openssl"}
        assert {s.attributes["http.request.method"] for s in group} == {"GET"}
    for s in server_spans:
        a = s.attributes
        assert a["url.scheme"] == "https"
        assert a["server.port"] == port
        assert a["client.address"] == "127.0.0.1"
        assert a["network.peer.address"] == "127.0.0.1"
        assert isinstance(a["client.port"], int) and a["client.port"] > 0
    base = f"https://127.0.0.1:{port}"
    assert sorted(s.attributes["url.full"] for s in client_spans) == sorted(f"{base}/items/{i}" for i in range(N))
    for s in client_spans:
        a = s.attributes
        assert a["url.scheme"] == "https"
        assert a["server.address"] == "127.0.0.1"
        assert a["server.port"] == port
        assert a["network.peer.port"] == port
    # Pairing: every server span's peer port is the local port of a client span, and the other way round.
    assert {s.attributes["client.port"] for s in server_spans} == {
        s.attributes["network.local.port"] for s in client_spans
    }


@pytest.mark.parametrize(
    ("mode", "connections", "agent"),
    [
        ("session", 1, "python-requests"),  # requests.Session: N requests over one TLS connection
        ("urllib", N, "Python-urllib"),  # a new TCP connection and TLS handshake per request
    ],
)
def test_https_python_client(py_tls_server, tls_cert, otelbpf, receiver, mode, connections, agent):
    """N requests from a python client to the TLS app.py; both ends traced."""
    client = https_client(mode, [py_tls_server.url(f"/items/{i}") for i in range(N)], tls_cert.cert)
    results, spans, res, t0, t1 = run_both_traced(py_tls_server, client, otelbpf, receiver, 2 * N)
    assert [r["status"] for r in results] == [200] * N, results
    assert_summary(res, requests=2 * N, exported=2 * N)
    server_spans = by_pid(spans, py_tls_server.pid)
    client_spans = by_pid(spans, client.pid)
    assert len(server_spans) == N and len(client_spans) == N, [(s.name, s.resource["process.pid"]) for s in spans]
    assert_https_pair(server_spans, client_spans, py_tls_server.port)
    assert len({s.attributes["client.port"] for s in server_spans}) == connections
    assert {s.attributes["user_agent.original"].split("/")[0] for s in server_spans} == {agent}
    assert_in_window(spans, t0, t1)


TOKEN = "s3cr3t-token"
QUERY_SECRET = "hunter2"


def test_https_secrets_not_exported(py_tls_server, tls_cert, otelbpf, receiver, tmp_path):
    """Decrypted TLS data follows the plain-HTTP rules: no Authorization header and no query string out.

    Both ends are traced. The secrets go to curl in a config file (-K): on its command line they would be
    exported, rightly, as the client's process.command_line.
    """
    url = py_tls_server.url(f"/items/1?token={QUERY_SECRET}")
    config = tmp_path / "curl.conf"
    config.write_text(f'header = "Authorization: Bearer {TOKEN}"\nurl = "{url}"\n')
    curl_argv = ["curl", "-s", "-S", "--max-time", "10", "--http1.1", "--cacert", str(tls_cert.cert)]
    curl_argv += ["-o", "/dev/null", "-w", "%{http_code} %{size_request}", "-K", str(config)]
    client = PausedClient(argv=[PYTHON, str(CLIENTS / "run_paused.py"), *curl_argv])
    done, spans, res, _, _ = run_both_traced(py_tls_server, client, otelbpf, receiver, 2)
    assert done["returncode"] == 0, done
    code, size_request = (int(x) for x in done["stdout"].split())
    assert code == 200
    assert_summary(res, requests=2, exported=2)
    server_spans = by_pid(spans, py_tls_server.pid)
    client_spans = by_pid(spans, done["pid"])
    assert len(server_spans) == 1 and len(client_spans) == 1, [(s.name, s.resource.get("process.pid")) for s in spans]
    (server,), (client_span,) = server_spans, client_spans
    assert server.kind == SERVER and client_span.kind == CLIENT
    assert client_span.attributes["url.full"] == f"https://127.0.0.1:{py_tls_server.port}/items/1"
    assert server.attributes["http.request.size"] == size_request  # the secrets were on the wire, decrypted
    for s in (server, client_span):
        assert s.name == "GET /items/{id}"
        assert s.attributes["url.scheme"] == "https"
        assert s.attributes["url.path"] == "/items/1"
        assert s.attributes["http.response.status_code"] == 200
        assert s.attributes["otelbpf.tls.library"] == "openssl"
        assert "url.query" not in s.attributes
        leaked = [v for v in all_values(s) if TOKEN in v or QUERY_SECRET in v]
        assert leaked == []
