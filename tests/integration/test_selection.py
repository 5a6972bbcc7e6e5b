"""What is traced: non-HTTP traffic never is, nor otelbpf itself when every process is traced."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from tests.integration.helpers import (
    CLIENT,
    CLIENTS,
    PYTHON,
    SERVER,
    PausedClient,
    assert_summary,
    by_pid,
    free_port,
    raw_client,
    settle,
    stop_process,
    wait_idle,
)

pytestmark = pytest.mark.integration

EXCHANGES = 50


@pytest.fixture
def redis_server(redis_server_bin, tmp_path):
    """A private redis-server on a free port: (process, port)."""
    port = free_port()
    with open(tmp_path / "redis.log", "wb") as log:
        proc = subprocess.Popen(
            [redis_server_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        for _ in range(100):
            ping = subprocess.run(["redis-cli", "-p", str(port), "PING"], capture_output=True, text=True)
            if ping.stdout.strip() == "PONG":
                break
            time.sleep(0.1)
        else:
            pytest.fail(f"redis-server did not start: {(tmp_path / 'redis.log').read_text()}")
        yield proc, port
    finally:
        stop_process(proc)


def test_non_http_traffic_is_ignored(server_factory, redis_server, otelbpf, receiver):
    """An echo server and redis, EXCHANGES exchanges each: no spans, no requests."""
    echo = server_factory("echo.py")
    redis, redis_port = redis_server
    run = otelbpf("--pid", str(echo.pid), "--pid", str(redis.pid), receiver=receiver)
    out = raw_client("echo", str(echo.port), str(EXCHANGES))
    assert out["exchanges"] == EXCHANGES
    port = str(redis_port)
    pings = subprocess.run(["redis-cli", "-p", port, "-r", str(EXCHANGES), "PING"], capture_output=True, text=True)
    assert pings.stdout.split() == ["PONG"] * EXCHANGES
    for _ in range(5):  # fresh connections too
        assert subprocess.run(["redis-cli", "-p", port, "PING"], capture_output=True, text=True).stdout == "PONG\n"
    wait_idle(echo.pid)
    wait_idle(redis.pid)
    res = run.stop()
    assert receiver.spans() == []
    assert_summary(res, requests=0, exported=0)


def test_a_binary_protocol_that_is_none_of_ours_gives_no_spans(server_factory, otelbpf, receiver):
    """Client and server both traced, a length-prefixed binary protocol: no protocol detector may claim it."""
    echo = server_factory("echo.py")
    raw = [PYTHON, str(CLIENTS / "raw_client.py"), "binary", str(echo.port), "47"]
    client = PausedClient(argv=[PYTHON, str(CLIENTS / "run_paused.py"), *raw])
    try:
        run = otelbpf("--pid", str(echo.pid), "--pid", str(client.pid), receiver=receiver)
        result = client.go()
    finally:
        client.stop()
    assert result["returncode"] == 0, result["stderr"]
    assert json.loads(result["stdout"])["exchanges"] == 47
    wait_idle(echo.pid)
    res = run.stop()
    assert receiver.spans() == []
    assert_summary(res, requests=0, exported=0)


def test_http_lookalike_payload_on_non_http_connection(server_factory, redis_server, otelbpf, receiver):
    """A connection that began as another protocol stays ignored when a later message reads like HTTP.

    The echo server is blocked in accept() when otelbpf attaches, as idle servers are.
    """
    echo = server_factory("echo.py")
    redis, redis_port = redis_server
    run = otelbpf("--pid", str(echo.pid), "--pid", str(redis.pid), receiver=receiver)
    for _ in range(2):  # the first connection is accepted by the accept() already waiting, the next by a new one
        out = raw_client("echo", str(echo.port), str(EXCHANGES), "lookalike")
        assert out["exchanges"] == EXCHANGES
    for i in range(5):
        cmd = ["redis-cli", "-p", str(redis_port), "SET", f"k{i}", "GET /items/1 HTTP/1.1"]
        assert subprocess.run(cmd, capture_output=True, text=True).stdout.strip() == "OK"
    wait_idle(echo.pid)
    wait_idle(redis.pid)
    res = run.stop()
    assert [(s.name, s.resource.get("process.pid"), s.attributes.get("client.port")) for s in receiver.spans()] == []
    assert_summary(res, requests=0, exported=0)


def test_trace_all_excludes_otelbpf(py_server, otelbpf, receiver):
    """No selector: every process is traced, except otelbpf and the far end of its own export traffic.

    The export is OTLP/HTTP (HTTP/1.1 POSTs, which otelbpf parses), so were otelbpf to trace itself, its
    export requests would come back as spans. Other HTTP traffic on the machine (a benchmark, say) is
    traced too: nothing may be shed or dropped for its sake, hence no rate limit and large buffers; only
    our processes' spans are counted.
    """
    runs = 5
    run = otelbpf(
        "--max-spans-per-second",
        "0",
        "--ring-buffer-pages",
        "8192",
        "--queue-size",
        "2000000",
        receiver=receiver,
        protocol="http/protobuf",
    )
    curl_pids = []
    for i in range(runs):
        proc = subprocess.Popen(
            ["curl", "-s", "-S", "--max-time", "10", "-o", "/dev/null", py_server.url(f"/items/{i}")],
            stdin=subprocess.DEVNULL,
        )
        curl_pids.append(proc.pid)
        assert proc.wait(30) == 0
    settle(receiver, 2 * runs)
    res = run.stop()
    assert res.returncode == 0, res.stderr
    spans = receiver.spans()
    server = by_pid(spans, py_server.pid)
    clients = [s for s in spans if s.resource.get("process.pid") in curl_pids]
    assert len(server) == runs and {s.kind for s in server} == {SERVER}, res.stderr
    assert len(clients) == runs and {s.kind for s in clients} == {CLIENT}, res.stderr
    assert sorted(s.resource["process.pid"] for s in clients) == sorted(curl_pids)
    assert sorted(s.attributes["url.path"] for s in server) == [f"/items/{i}" for i in range(runs)]
    assert by_pid(spans, run.pid) == []  # otelbpf's export requests
    assert by_pid(spans, os.getpid()) == []  # the receiver in this process, answering them
    assert res.summary.get("connections from otelbpf's own export (not traced)", 0) >= 1, res.stderr
    assert res.summary.get("events lost") == 0, res.stderr
    assert res.summary.get("spans exported") == len(spans), res.stderr
