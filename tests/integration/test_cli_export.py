"""Command line errors, OTLP configuration from flags and environment, resources, a dead backend."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.integration.helpers import (
    REPO,
    STOP_TIMEOUT_S,
    VENV,
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


@pytest.fixture(scope="module")
def readable_otelbpf() -> Iterator[Path]:
    """The installed ``otelbpf`` entry point, relocated where any user can read it; yields its path.

    The checkout may live where an unprivileged user cannot even look (a clone under /root is mode 0700),
    and the venv's entry point, its interpreter link and the editable install all name paths inside it.
    So the venv and the package are copied to a world-readable directory, and the two places that name
    the checkout (the entry point's shebang and the editable finder's mapping) are pointed at the copies.
    """
    top = Path(tempfile.mkdtemp(prefix="otelbpf-unprivileged-"))
    try:
        top.chmod(0o755)
        venv = top / "venv"
        shutil.copytree(VENV, venv, symlinks=True)
        shutil.copytree(REPO / "otelbpf", top / "otelbpf", ignore=shutil.ignore_patterns("__pycache__"))
        entry = venv / "bin" / "otelbpf"
        entry.write_text(entry.read_text().replace(str(VENV), str(venv), 1))
        (finder,) = venv.glob("lib/python3*/site-packages/__editable___otelbpf_*_finder.py")
        finder.write_text(finder.read_text().replace(repr(str(REPO / "otelbpf")), repr(str(top / "otelbpf"))))
        for path in (top, *top.rglob("*")):  # copies keep the checkout's modes: make sure others may read
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
        yield entry
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_not_root(readable_otelbpf):
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed"
    cmd = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", str(readable_otelbpf), "run"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=clean_env(), cwd="/")
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0] == (
        "otelbpf: error: otelbpf must run as root (it loads eBPF programs: CAP_BPF, CAP_PERFMON, "
        "CAP_SYS_ADMIN); try: sudo otelbpf run ..."
    )
    # The same copy runs as root: what failed above was the missing privilege, not the relocation.
    res = subprocess.run([str(readable_otelbpf), "run", "--help"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.startswith("usage: otelbpf run"), res.stderr


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
