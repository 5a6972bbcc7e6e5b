"""Command line errors, OTLP configuration from flags and environment, resources, a dead backend."""

from __future__ import annotations

import shutil
import subprocess

import psutil
import pytest

from tests.integration.helpers import (
    OTELBPF,
    STOP_TIMEOUT_S,
    assert_summary,
    clean_env,
    curl,
    free_port,
    settle,
)
from tests.otlp_receiver import OtlpReceiver

pytestmark = pytest.mark.integration


def error_line(res) -> str:
    """The single stderr line of a failed run."""
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_unknown_pid(otelbpf):
    assert not psutil.pid_exists(999999)
    res = otelbpf("--pid", "999999", ready=False).wait()
    assert res.returncode == 2
    line = error_line(res)
    assert line.startswith("otelbpf: error:")
    assert "no process with pid 999999" in line


def test_not_root():
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed"
    cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", OTELBPF, "run"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=clean_env(), cwd="/")
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("otelbpf: error:") and "must run as root" in lines[0]


def test_bad_protocol(otelbpf):
    res = otelbpf("--otlp-protocol", "http/json", ready=False).wait()
    assert res.returncode == 2
    assert "invalid choice: 'http/json'" in res.stderr
    # From the environment it is otelbpf's own one-line error, before any probe is loaded.
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    res = otelbpf(env=env, ready=False).wait()
    assert res.returncode == 2
    line = error_line(res)
    assert line.startswith("otelbpf: error:") and "http/json" in line


def test_backend_down(py_server, otelbpf):
    """Nothing listens on the endpoint: exit 0 in bounded time, every span accounted for as lost."""
    requests = 4
    dead = f"http://127.0.0.1:{free_port()}"
    run = otelbpf(
        "--pid",
        str(py_server.pid),
        "--otlp-endpoint",
        dead,
        "--otlp-protocol",
        "grpc",
        env={"OTEL_EXPORTER_OTLP_TIMEOUT": "500"},
    )
    for i in range(requests):
        curl("-o", "/dev/null", py_server.url(f"/items/{i}"))
    res = run.stop(timeout=STOP_TIMEOUT_S)
    assert res.returncode == 0, res.stderr
    assert res.elapsed_s < 20, f"exit took {res.elapsed_s:.1f}s (the shutdown flush is bounded at 10 s)"
    s = res.summary
    assert s.get("requests seen") == requests, res.stderr
    assert s.get("spans exported") == 0, res.stderr
    failed = s.get("export failed after retries", 0) + s.get("unexported at shutdown", 0)
    assert failed == requests, res.stderr
    assert s.get("events lost") == requests, res.stderr


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_resource_env_and_headers(server_factory, otelbpf, receiver, protocol):
    app = server_factory("app.py", env=clean_env(OTEL_SERVICE_NAME="my-svc"))
    env = {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test", "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=abc"}
    run = otelbpf("--pid", str(app.pid), receiver=receiver, protocol=protocol, env=env)
    for i in range(3):
        curl("-o", "/dev/null", app.url(f"/items/{i}"))
    settle(receiver, 3)
    res = run.stop()
    spans = receiver.spans()
    assert_summary(res, requests=3, exported=3)
    assert len(spans) == 3
    for s in spans:
        assert s.resource["service.name"] == "my-svc"
        assert s.resource["deployment.environment"] == "test"
        assert s.resource["process.pid"] == app.pid
    headers = receiver.headers()
    assert headers and all(h.get("x-tenant") == "abc" for h in headers), headers


def test_endpoint_and_protocol_from_env(py_server, otelbpf, receiver):
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
    run = otelbpf("--pid", str(py_server.pid), env=env)
    for i in range(3):
        curl("-o", "/dev/null", py_server.url(f"/items/{i}"))
    settle(receiver, 3)
    res = run.stop()
    assert_summary(res, requests=3, exported=3)
    spans = receiver.spans()
    assert len(spans) == 3 and {s.protocol for s in spans} == {"http"}
    assert {r.path for r in receiver.requests()} == {"/v1/traces"}


def test_flags_beat_env(py_server, otelbpf, receiver):
    other = OtlpReceiver().start()
    try:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": other.http_endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
        run = otelbpf("--pid", str(py_server.pid), receiver=receiver, protocol="grpc", env=env)
        for i in range(3):
            curl("-o", "/dev/null", py_server.url(f"/items/{i}"))
        settle(receiver, 3)
        res = run.stop()
        assert_summary(res, requests=3, exported=3)
        spans = receiver.spans()
        assert len(spans) == 3 and {s.protocol for s in spans} == {"grpc"}
        assert other.requests() == []
    finally:
        other.stop()


@pytest.mark.parametrize(
    ("path", "message"),
    [("/no/such/libssl.so.3", "no such file"), ("/bin/true", "not a TLS library otelbpf can hook")],
)
def test_bad_tls_library(otelbpf, path, message):
    res = otelbpf("--tls-library", path, ready=False).wait()
    assert res.returncode == 2
    line = error_line(res)
    assert line.startswith("otelbpf: error: --tls-library") and path in line and message in line
