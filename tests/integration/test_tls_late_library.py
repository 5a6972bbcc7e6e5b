"""A traced process maps a libssl file otelbpf has never seen, after otelbpf started: it is attached then."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.integration.helpers import (
    CLIENT,
    CLIENTS,
    PYTHON,
    SERVER,
    PausedClient,
    assert_in_window,
    assert_summary,
    by_pid,
    clean_env,
    mapped_files,
    settle,
    wait_for_stderr_line,
)

pytestmark = pytest.mark.integration

N = 13


def libssl_of(maps: set[str]) -> list[str]:
    return sorted(f for f in maps if os.path.basename(f).startswith("libssl.so"))


def test_libssl_loaded_after_start_is_attached(py_tls_server, tls_cert, otelbpf, receiver, tmp_path):
    # Copy the libssl (and libcrypto) the server uses: same code, a file no probe is attached to yet.
    (system_libssl,) = libssl_of(mapped_files(py_tls_server.pid))
    libdir = (tmp_path / "lib").resolve()
    libdir.mkdir()
    for name in ("libssl.so.3", "libcrypto.so.3"):
        shutil.copyfile(os.path.join(os.path.dirname(system_libssl), name), libdir / name)
    copy = str(libdir / "libssl.so.3")

    urls = [py_tls_server.url(f"/items/{i}") for i in range(N)]
    client = PausedClient(
        argv=[PYTHON, str(CLIENTS / "late_tls_client.py"), str(tls_cert.cert), *urls],
        env=clean_env(LD_LIBRARY_PATH=str(libdir)),
    )
    try:
        assert libssl_of(mapped_files(client.pid)) == []
        run = otelbpf("--pid", str(client.pid), "--pid", str(py_tls_server.pid), receiver=receiver)
        assert client.say("load") == "loaded"
        assert libssl_of(mapped_files(client.pid)) == [copy]
        wait_for_stderr_line(run, "attached", copy, timeout=15.0)
        t0 = time.time_ns()
        results = client.go()
        t1 = time.time_ns()
        settle(receiver, 2 * N)
        res = run.stop()
    finally:
        client.stop()

    assert [r["status"] for r in results] == [200] * N, results
    assert len({r["local_port"] for r in results}) == 1, results
    spans = receiver.spans()
    assert_summary(res, requests=2 * N, exported=2 * N)
    client_spans = by_pid(spans, client.pid)
    server_spans = by_pid(spans, py_tls_server.pid)
    assert len(client_spans) == N and len(server_spans) == N, [(s.name, s.resource.get("process.pid")) for s in spans]
    assert {s.kind for s in client_spans} == {CLIENT}
    assert {s.kind for s in server_spans} == {SERVER}
    base = f"https://127.0.0.1:{py_tls_server.port}"
    assert sorted(s.attributes["url.full"] for s in client_spans) == sorted(f"{base}/items/{i}" for i in range(N))
    for s in client_spans:
        assert s.name == "GET /items/{id}"
        assert s.attributes["url.scheme"] == "https"
        assert s.attributes["http.response.status_code"] == 200
        assert s.attributes["otelbpf.tls.library"] == "openssl"
        assert s.attributes["network.local.port"] == results[0]["local_port"]
    for s in server_spans:
        assert s.attributes["url.scheme"] == "https"
        assert s.attributes["client.port"] == results[0]["local_port"]
    assert_in_window(spans, t0, t1)
