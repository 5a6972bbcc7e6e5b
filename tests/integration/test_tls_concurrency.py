"""Many TLS connections interleaved on one server thread: each span carries its own connection's socket.

nginx (one worker, socket BIO) and node (one thread, memory BIO) both serve K connections from one
event loop. A call served from OpenSSL's buffer, or a memory-BIO call, has no socket syscall inside,
so this checks that no span is tied to a neighbour's socket.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.integration.helpers import CLIENTS, PYTHON, SERVER, assert_summary, clean_env, settle

pytestmark = pytest.mark.integration

K = 7  # connections
M = 11  # requests per connection


@pytest.mark.parametrize(
    ("server_fixture", "guessed"),
    [
        ("nginx_tls_server", 0),  # socket BIO: the socket is always seen inside a call, never guessed
        ("node_https_server", K),  # memory BIO: each session's socket is guessed once, and must be right
    ],
)
def test_interleaved_connections_keep_their_sockets(request, server_fixture, guessed, tls_cert, otelbpf, receiver):
    server = request.getfixturevalue(server_fixture)
    run = otelbpf("--pid", str(server.pid), receiver=receiver)
    res = subprocess.run(
        [PYTHON, str(CLIENTS / "tls_concurrent_client.py"), str(tls_cert.cert), str(server.port), str(K), str(M)],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    settle(receiver, K * M)
    summary = run.stop()
    assert len(out["statuses"]) == K * M
    spans = receiver.spans()
    assert_summary(summary, requests=K * M, exported=K * M)
    assert len(spans) == K * M
    ports = {int(k): v for k, v in out["ports"].items()}
    seen = set()
    for s in spans:
        assert s.kind == SERVER
        m = re.fullmatch(r"/c(\d+)/r(\d+)", s.attributes["url.path"])
        assert m, s.attributes["url.path"]
        conn, rnd = int(m.group(1)), int(m.group(2))
        seen.add((conn, rnd))
        assert s.attributes["url.scheme"] == "https"
        assert s.attributes["client.port"] == ports[conn], (s.attributes["url.path"], ports)
        assert s.attributes["server.port"] == server.port
    assert seen == {(c, r) for c in range(K) for r in range(M)}
    notes = summary.summary
    assert notes.get("TLS sessions tied to the thread's last TLS socket (memory BIO)", 0) == guessed, summary.stderr
    assert notes.get("TLS socket guesses corrected", 0) == 0, summary.stderr
    assert notes.get("TLS calls without a known socket", 0) == 0, summary.stderr
