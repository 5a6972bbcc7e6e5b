"""HTTPS through GnuTLS (gnutls_record_recv/send): wget processes selected by --exe before they start."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from tests.integration.helpers import (
    CLIENT,
    STATUS_UNSET,
    assert_in_window,
    assert_summary,
    settle,
)

pytestmark = pytest.mark.integration

RUNS = 3


@pytest.fixture(scope="module")
def wget_bin() -> str:
    """wget, checked to be the GnuTLS build (Debian's); an OpenSSL build would test the wrong library."""
    wget = shutil.which("wget")
    assert wget, "wget is not installed (apt-get install wget)"
    ldd = subprocess.run(["ldd", wget], capture_output=True, text=True).stdout
    assert "libgnutls" in ldd, f"this wget does not link GnuTLS:\n{ldd}"
    return wget


def test_wget_gnutls_client_spans(wget_bin, nginx_tls_server, tls_cert, otelbpf, receiver):
    """RUNS separate wget processes, one GET each: exactly RUNS CLIENT spans (nginx itself is not traced)."""
    port = nginx_tls_server.port
    url = nginx_tls_server.url("/static.txt")
    run = otelbpf("--exe", "wget", receiver=receiver)
    pids = []
    t0 = time.time_ns()
    for _ in range(RUNS):
        # --no-config/--no-hsts: no ~/.wgetrc, no ~/.wget-hsts written; the test CA verifies the server.
        proc = subprocess.Popen(
            [wget_bin, "-q", "--no-config", "--no-hsts", f"--ca-certificate={tls_cert.cert}", "-O", "/dev/null", url],
            stdin=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        pids.append(proc.pid)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    t1 = time.time_ns()
    settle(receiver, RUNS)
    res = run.stop()

    spans = receiver.spans()
    assert_summary(res, requests=RUNS, exported=RUNS)
    assert len(spans) == RUNS, [(s.name, s.resource.get("process.pid")) for s in spans]
    assert sorted(s.resource["process.pid"] for s in spans) == sorted(pids)
    for s in spans:
        a = s.attributes
        assert s.kind == CLIENT
        assert s.name == "GET /static.txt"
        assert s.status_code == STATUS_UNSET
        assert s.resource["service.name"] == "wget"
        assert a["otelbpf.tls.library"] == "gnutls"
        assert a["url.scheme"] == "https"
        assert a["url.full"] == f"https://127.0.0.1:{port}/static.txt"
        assert a["http.request.method"] == "GET"
        assert a["http.response.status_code"] == 200
        assert a["server.address"] == "127.0.0.1"
        assert a["server.port"] == port
        assert a["network.peer.port"] == port
        assert a["user_agent.original"].startswith("Wget/")
    assert_in_window(spans, t0, t1)
