"""HTTPS in node: OpenSSL linked into the node binary, driven through memory BIOs; both ends traced."""

from __future__ import annotations

import pytest

from tests.integration.helpers import (
    CLIENT,
    CLIENTS,
    NODE,
    SERVER,
    STATUS_ERROR,
    STATUS_UNSET,
    PausedClient,
    assert_in_window,
    assert_summary,
    by_pid,
    run_both_traced,
)

pytestmark = pytest.mark.integration

N = 13
FAILS = 2


def test_node_https_keepalive_both_traced(node_https_server, tls_cert, otelbpf, receiver):
    """N + FAILS requests over one keep-alive TLS connection: as many SERVER and CLIENT spans, paired by port."""
    port = node_https_server.port
    urls = [node_https_server.url(f"/items/{i}") for i in range(N)] + [node_https_server.url("/error")] * FAILS
    client = PausedClient(argv=[NODE, str(CLIENTS / "node_https_client.js"), str(tls_cert.cert), *urls])
    total = N + FAILS
    results, spans, res, t0, t1 = run_both_traced(node_https_server, client, otelbpf, receiver, 2 * total)

    assert [r["status"] for r in results] == [200] * N + [500] * FAILS, results
    local_ports = {r["local_port"] for r in results}
    assert len(local_ports) == 1, f"the agent should reuse one socket: {local_ports}"
    assert_summary(res, requests=2 * total, exported=2 * total)
    server_spans = by_pid(spans, node_https_server.pid)
    client_spans = by_pid(spans, client.pid)
    assert len(server_spans) == total and len(client_spans) == total, [
        (s.name, s.resource.get("process.pid")) for s in spans
    ]
    assert {s.kind for s in server_spans} == {SERVER}
    assert {s.kind for s in client_spans} == {CLIENT}
    for group in (server_spans, client_spans):
        assert sorted(s.attributes["url.path"] for s in group) == sorted(
            [f"/items/{i}" for i in range(N)] + ["/error"] * FAILS
        )
        for s in group:
            a = s.attributes
            assert a["url.scheme"] == "https"
            assert a["otelbpf.tls.library"] == "openssl"
            assert a["http.request.method"] == "GET"
            if a["url.path"] == "/error":
                assert s.name == "GET /error"
                assert a["http.response.status_code"] == 500
                assert s.status_code == STATUS_ERROR
                assert a["error.type"] == "500"
            else:
                assert s.name == "GET /items/{id}"
                assert a["http.response.status_code"] == 200
                assert s.status_code == STATUS_UNSET
    for s in server_spans:
        assert s.attributes["server.port"] == port
        assert s.attributes["client.address"] == "127.0.0.1"
        assert s.attributes["network.peer.address"] == "127.0.0.1"
    base = f"https://127.0.0.1:{port}"
    expected_urls = [f"{base}/items/{i}" for i in range(N)] + [f"{base}/error"] * FAILS
    assert sorted(s.attributes["url.full"] for s in client_spans) == sorted(expected_urls)
    for s in client_spans:
        assert s.attributes["server.address"] == "127.0.0.1"
        assert s.attributes["server.port"] == port
        assert s.attributes["network.peer.port"] == port
    # Memory BIOs hide the socket from SSL_read/SSL_write: the connection must still be the right one.
    assert {s.attributes["client.port"] for s in server_spans} == local_ports
    assert {s.attributes["network.local.port"] for s in client_spans} == local_ports
    assert_in_window(spans, t0, t1)
