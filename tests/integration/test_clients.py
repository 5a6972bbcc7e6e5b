"""CLIENT spans: a python urllib client traced by --pid, and curl traced by --exe before it starts."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.integration.helpers import (
    CLIENT,
    STATUS_ERROR,
    STATUS_UNSET,
    PausedClient,
    assert_in_window,
    assert_summary,
    by_pid,
    exe_of,
    settle,
)

pytestmark = pytest.mark.integration

N = 7


def test_urllib_client_spans(py_server, otelbpf, receiver):
    """The server is not traced: only the client's N+1 requests become spans."""
    urls = [py_server.url(f"/items/{i}") for i in range(N - 1)] + [py_server.url(f"/items/{N - 1}?q=secret")]
    client = PausedClient("urllib", [*urls, py_server.url("/missing")])
    try:
        exe, service = exe_of(client.pid)
        run = otelbpf("--pid", str(client.pid), receiver=receiver)
        t0 = time.time_ns()
        results = client.go()
        t1 = time.time_ns()
        settle(receiver, N + 1)
        res = run.stop()
    finally:
        client.stop()
    assert [r["status"] for r in results] == [200] * N + [404]
    spans = receiver.spans()
    assert_summary(res, requests=N + 1, exported=N + 1)
    assert len(spans) == N + 1
    assert by_pid(spans, client.pid) == spans
    items = [s for s in spans if s.name == "GET /items/{id}"]
    missing = [s for s in spans if s.name == "GET /missing"]
    assert len(items) == N and len(missing) == 1
    base = f"http://127.0.0.1:{py_server.port}"
    assert sorted(s.attributes["url.full"] for s in items) == sorted(f"{base}/items/{i}" for i in range(N))
    for s in spans:
        a = s.attributes
        assert s.kind == CLIENT
        assert a["http.request.method"] == "GET"
        assert a["server.address"] == "127.0.0.1"
        assert a["server.port"] == py_server.port
        assert a["network.peer.address"] == "127.0.0.1"
        assert a["network.peer.port"] == py_server.port
        assert a["user_agent.original"].startswith("Python-urllib/")
        assert "url.query" not in a
        assert "secret" not in a["url.full"]
        assert s.resource["process.pid"] == client.pid
        assert s.resource["service.name"] == service
        assert s.resource["process.executable.path"] == exe
        assert "http_client.py" in s.resource["process.command_line"]
    for s in items:
        assert s.attributes["http.response.status_code"] == 200
        assert s.status_code == STATUS_UNSET
        assert "error.type" not in s.attributes
    (m,) = missing
    assert m.attributes["url.full"] == f"{base}/missing"
    assert m.attributes["http.response.status_code"] == 404
    assert m.status_code == STATUS_ERROR  # clients: 4xx is an error
    assert m.attributes["error.type"] == "404"
    assert_in_window(spans, t0, t1)


def test_exe_selects_processes_started_later(py_server, otelbpf, receiver):
    """--exe curl before any curl runs: each new curl process is traced from its exec."""
    runs = 5
    run = otelbpf("--exe", "curl", receiver=receiver)
    pids = []
    for i in range(runs):
        proc = subprocess.Popen(
            ["curl", "-s", "-S", "--max-time", "10", "-o", "/dev/null", py_server.url(f"/items/{i}")],
            stdin=subprocess.DEVNULL,
        )
        pids.append(proc.pid)
        assert proc.wait(30) == 0
    quiet = subprocess.Popen(["curl", "--version"], stdout=subprocess.DEVNULL)  # no network traffic: no span
    assert quiet.wait(30) == 0
    settle(receiver, runs)
    res = run.stop()
    # Only our curl processes are counted: another curl elsewhere on the machine would be traced too.
    spans = [s for s in receiver.spans() if s.resource.get("process.pid") in {*pids, quiet.pid}]
    assert len(spans) == runs
    assert sorted(s.resource["process.pid"] for s in spans) == sorted(pids)
    assert res.returncode == 0 and res.summary.get("events lost") == 0, res.stderr
    for s in spans:
        assert s.kind == CLIENT
        assert s.name == "GET /items/{id}"
        assert s.attributes["http.response.status_code"] == 200
        assert s.attributes["url.full"].startswith(f"http://127.0.0.1:{py_server.port}/items/")
    # curl exits milliseconds after its request: its resource must still describe it.
    assert [s.resource["service.name"] for s in spans] == ["curl"] * runs
