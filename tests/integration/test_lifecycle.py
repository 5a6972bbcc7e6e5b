"""Selection by --port, and how a run ends: SIGTERM and --duration flush every finished span."""

from __future__ import annotations

import signal

import pytest

from tests.integration.helpers import (
    SERVER,
    assert_summary,
    by_pid,
    curl,
    free_port,
    settle,
    wait_for_stderr_line,
    wait_idle,
)

pytestmark = pytest.mark.integration

N = 11


def test_port_selects_the_listener_only(py_server, server_factory, otelbpf, receiver):
    """--port traces the process listening there; another server hit by the same client is not traced."""
    other = server_factory("app.py")
    run = otelbpf("--port", str(py_server.port), receiver=receiver)
    for i in range(N):
        curl("-s", "-o", "/dev/null", py_server.url(f"/items/{i}"))
        curl("-s", "-o", "/dev/null", other.url(f"/items/{i}"))
    settle(receiver, N)
    res = run.stop()
    assert_summary(res, requests=N, exported=N)
    spans = receiver.spans()
    assert len(spans) == N
    assert by_pid(spans, py_server.pid) == spans
    assert all(s.kind == SERVER and s.attributes["server.port"] == py_server.port for s in spans)


def test_port_picks_up_a_listener_that_starts_later(server_factory, otelbpf, receiver):
    """A server that starts listening after otelbpf is ready joins at the next rescan, which says so."""
    port = free_port()
    run = otelbpf("--port", str(port), "--port-scan-interval", "0.2", receiver=receiver)
    late = server_factory("app.py", "--port", str(port))
    wait_for_stderr_line(run, f"now tracing pid {late.pid} (python", "listens on a selected port")
    for i in range(N):
        curl("-s", "-o", "/dev/null", late.url(f"/items/{i}"))
    settle(receiver, N)
    res = run.stop()
    assert_summary(res, requests=N, exported=N)
    assert len(by_pid(receiver.spans(), late.pid)) == N


def test_sigterm_flushes_and_summarises(py_server, otelbpf, receiver):
    """Spans still held (linker, export queue) when SIGTERM arrives are all exported before the exit."""
    # A ten-minute export delay: nothing can reach the receiver before the signal except by the flush.
    env = {"OTEL_BSP_SCHEDULE_DELAY": "600000"}
    run = otelbpf("--pid", str(py_server.pid), receiver=receiver, protocol="http/protobuf", env=env)
    for i in range(N):
        curl("-s", "-o", "/dev/null", py_server.url(f"/items/{i}"))
    wait_idle(py_server.pid)  # every record is in the ring buffer now
    assert receiver.spans() == []
    run.proc.send_signal(signal.SIGTERM)
    res = run.wait()
    assert_summary(res, requests=N, exported=N)
    assert len(receiver.spans()) == N


def test_duration_ends_the_run_by_itself(py_server, otelbpf, receiver):
    run = otelbpf("--pid", str(py_server.pid), "--duration", "3", receiver=receiver)
    for i in range(N):
        curl("-s", "-o", "/dev/null", py_server.url(f"/items/{i}"))
    res = run.wait(timeout=20)
    assert_summary(res, requests=N, exported=N)
    assert len(receiver.spans()) == N


def test_every_probe_tracepoint_exists_here():
    """The list preflight checks is the list the probes need, and this kernel has them all (tracefs is root-only)."""
    from otelbpf import preflight, probes

    preflight.check_tracepoints(probes.TRACEPOINTS + probes.TCP_TRACEPOINTS)
