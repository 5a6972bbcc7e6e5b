"""OpenSSL 1.1 from a copy inside a wheel (psycopg2-binary's libssl-*.so.1.1), found in the client's maps."""

from __future__ import annotations

import sysconfig
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
    mapped_files,
    settle,
)

pytestmark = pytest.mark.integration

N = 13


def wheel_openssl11() -> tuple[Path, Path]:
    """(libcrypto, libssl) 1.1 as psycopg2-binary's wheel bundles them (a test dependency in pyproject.toml)."""
    libs = Path(sysconfig.get_paths()["purelib"]) / "psycopg2_binary.libs"
    ssl = sorted(libs.glob("libssl-*.so.1.1"))
    crypto = sorted(libs.glob("libcrypto-*.so.1.1"))
    assert ssl and crypto, f"no OpenSSL 1.1 in {libs}: run make setup (pip install -e '.[test]')"
    return crypto[0], ssl[0]


def test_openssl11_wheel_copy_client(py_tls_server, tls_cert, otelbpf, receiver):
    libcrypto, libssl = wheel_openssl11()
    paths = [f"/items/{i}" for i in range(N)]
    argv = [PYTHON, str(CLIENTS / "openssl11_client.py"), str(libcrypto), str(libssl), str(tls_cert.cert)]
    client = PausedClient(argv=[*argv, str(py_tls_server.port), *paths])
    try:
        assert str(libssl) in mapped_files(client.pid)  # the copy is what the client uses
        run = otelbpf("--pid", str(py_tls_server.pid), "--pid", str(client.pid), receiver=receiver)
        # Found in the client's /proc/PID/maps at start, and attached once for every process.
        assert f"TLS: attached openssl (shared) {libssl}" in run.stderr()
        t0 = time.time_ns()
        results = client.go()
        t1 = time.time_ns()
        settle(receiver, 2 * N)
        res = run.stop()
    finally:
        client.stop()
    assert [r["status"] for r in results] == [200] * N, results
    (local_port,) = {r["local_port"] for r in results}
    spans = receiver.spans()
    assert_summary(res, requests=2 * N, exported=2 * N)
    client_spans = by_pid(spans, client.pid)
    server_spans = by_pid(spans, py_tls_server.pid)
    assert len(client_spans) == N and len(server_spans) == N, [(s.name, s.resource.get("process.pid")) for s in spans]
    base = f"https://127.0.0.1:{py_tls_server.port}"
    assert sorted(s.attributes["url.full"] for s in client_spans) == sorted(base + p for p in paths)
    for s in client_spans:
        a = s.attributes
        assert s.kind == CLIENT and s.name == "GET /items/{id}" and s.status_code == STATUS_UNSET
        assert a["url.scheme"] == "https" and a["otelbpf.tls.library"] == "openssl"
        assert a["http.response.status_code"] == 200
        assert a["network.peer.port"] == py_tls_server.port
        assert a["network.local.port"] == local_port
    for s in server_spans:
        assert s.kind == SERVER
        assert s.attributes["client.port"] == local_port
        assert s.attributes["user_agent.original"] == "openssl11-client/1"
    assert_in_window(spans, t0, t1)
