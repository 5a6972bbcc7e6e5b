"""Per-process TLS probes (--pid/--exe/--port): a traced nginx pays its own uprobe traps and nothing else
does, and workers nginx forks after otelbpf started are hooked as they appear."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from tests.integration.helpers import SERVER, assert_summary, curl, settle, wait_idle

pytestmark = pytest.mark.integration

N = 23
# nginx makes three TLS calls per request on a keep-alive connection (SSL_read of the request, SSL_write of the
# response, SSL_read finding nothing more), each an entry and a return trap; the connection's handshake adds a few.
TRAPS_PER_REQUEST = 6
HANDSHAKE_TRAPS = 8


def curl_n(server, ca, n: int = N) -> list[str]:
    """n GETs over one keep-alive connection from an untraced curl; their status codes."""
    url = server.url("/static.txt")
    out = curl("--http1.1", "--cacert", str(ca), "-w", "%{http_code}\n", *["-o", "/dev/null"] * n, *[url] * n)
    return out.stdout.split()


def workers(master: int) -> set[int]:
    return {p.pid for p in psutil.Process(master).children()}


def test_only_the_traced_nginx_pays_uprobe_traps(nginx_tls_server, tls_cert, otelbpf, receiver):
    """An untraced curl against a traced nginx: N spans, and exactly nginx's traps, none of curl's."""
    run = otelbpf("--pid", str(nginx_tls_server.pid), receiver=receiver)
    assert curl_n(nginx_tls_server, tls_cert.cert) == ["200"] * N
    wait_idle(nginx_tls_server.pid)
    settle(receiver, N)
    res = run.stop()
    assert_summary(res, requests=N, exported=N)
    assert {s.kind for s in receiver.spans()} == {SERVER}
    s = res.summary
    assert s["TLS processes given their own probes"] == 2, res.stderr  # the master and its worker
    hits = s["TLS uprobe hits (all processes)"]
    # curl's SSL_write/SSL_read would add 4 traps a request if the probes were file-wide.
    assert TRAPS_PER_REQUEST * N <= hits <= TRAPS_PER_REQUEST * N + HANDSHAKE_TRAPS, res.stderr


def test_workers_forked_after_start_are_hooked(nginx_tls_server, tls_cert, otelbpf, receiver):
    """nginx reloads (SIGHUP): its new worker, forked from the traced master, is traced from its first request."""
    master = nginx_tls_server.pid
    run = otelbpf("--pid", str(master), receiver=receiver)
    old = workers(master)
    os.kill(master, signal.SIGHUP)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        new = workers(master) - old
        if new and not workers(master) & old:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"nginx did not replace its workers {old}: {workers(master)}")
    assert curl_n(nginx_tls_server, tls_cert.cert) == ["200"] * N
    wait_idle(master)
    settle(receiver, N)
    res = run.stop()
    assert_summary(res, requests=N, exported=N)
    spans = receiver.spans()
    assert {s.resource["process.pid"] for s in spans} == new
    assert res.summary["TLS processes hooked after fork"] >= 1, res.stderr
