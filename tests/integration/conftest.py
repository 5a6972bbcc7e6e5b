"""Fixtures for the integration suite: real eBPF probes, real servers and clients, a real OTLP receiver.

Everything here runs as root; the only skip in the suite is the root check below.
"""

from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.integration.helpers import (
    NODE,
    PYTHON,
    SERVERS,
    OtelbpfRun,
    Server,
    TlsCert,
    clean_env,
    free_port,
    make_tls_cert,
    start_script_server,
    start_server,
    stop_process,
)
from tests.otlp_receiver import OtlpReceiver


@pytest.fixture(scope="session", autouse=True)
def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: loads eBPF probes")


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    """A fresh OTLP receiver (gRPC and HTTP) per test, in this (untraced) process."""
    rec = OtlpReceiver().start()
    try:
        yield rec
    finally:
        rec.stop()


StartOtelbpf = Callable[..., OtelbpfRun]


@pytest.fixture
def otelbpf(tmp_path: Path) -> Iterator[StartOtelbpf]:
    """Factory: start ``otelbpf run ARGS`` and (by default) wait for "ready"; stopped at teardown if left.

    start(*args, receiver=None, protocol="grpc", env=None, ready=True). With a receiver, the endpoint
    and protocol flags are added. env: extra environment on top of a clean one (no OTEL_* inherited).
    """
    runs: list[OtelbpfRun] = []

    def start(
        *args: str,
        receiver: OtlpReceiver | None = None,
        protocol: str = "grpc",
        env: dict[str, str] | None = None,
        ready: bool = True,
    ) -> OtelbpfRun:
        argv = list(args)
        if receiver is not None:
            endpoint = receiver.grpc_endpoint if protocol == "grpc" else receiver.http_endpoint
            argv += ["--otlp-endpoint", endpoint, "--otlp-protocol", protocol]
        run = OtelbpfRun(argv, clean_env(**(env or {})), tmp_path)
        runs.append(run)
        if ready:
            run.wait_ready()
        return run

    try:
        yield start
    finally:
        for run in runs:
            run.terminate()


@pytest.fixture(scope="module")
def py_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The python http.server app (servers/app.py), shared by a module; started before any otelbpf."""
    log = tmp_path_factory.mktemp("app") / "app.stderr"
    server = start_script_server(SERVERS / "app.py", log=log)
    try:
        yield server
    finally:
        stop_process(server.proc)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start extra servers from servers/ for one test (e.g. with a special environment)."""
    started: list[Server] = []

    def start(script: str, *args: str, env: dict[str, str] | None = None) -> Server:
        server = start_script_server(SERVERS / script, *args, env=env, log=tmp_path / f"{script}.stderr")
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            stop_process(server.proc)


NGINX_CONF = """
worker_processes 1;
user root root;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type text/plain;
    keepalive_requests 1000;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port}{listen_flags};
        root {d}/www;
        location = /fail {{ return 500; }}{server_extra}
    }}
}}
"""

NGINX_TLS = """
        ssl_certificate {cert};
        ssl_certificate_key {key};"""

STATIC_FILES = {
    "static.txt": b"static file served by nginx\n" * 20,
    "one.txt": b"one\n",
    "two.txt": b"two two\n",
    "three.txt": b"three three three\n",
}


def _nginx_ready(
    proc: subprocess.Popen, port: int, timeout: float = 15.0, scheme: str = "http", ca: Path | None = None
) -> bool:
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}/one.txt", timeout=2, context=context) as resp:
                if resp.status == 200 and psutil.Process(proc.pid).children():
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def _start_nginx(d: Path, tls: TlsCert | None = None) -> Server:
    """nginx (master + 1 worker) from NGINX_CONF in directory ``d``, on a free port; HTTPS with ``tls``."""
    nginx = shutil.which("nginx")
    assert nginx, "nginx is not installed (make setup installs nginx-light)"
    (d / "www").mkdir()
    for name, body in STATIC_FILES.items():
        (d / "www" / name).write_bytes(body)
    scheme = "https" if tls else "http"
    flags = " ssl" if tls else ""
    extra = NGINX_TLS.format(cert=tls.cert, key=tls.key) if tls else ""
    last_err = ""
    for _ in range(3):  # a free port can be taken between the probe and nginx's bind
        port = free_port()
        conf = d / "nginx.conf"
        conf.write_text(NGINX_CONF.format(d=d, port=port, listen_flags=flags, server_extra=extra))
        with open(d / "nginx.stderr", "wb") as err:
            proc = subprocess.Popen(
                [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        if _nginx_ready(proc, port, scheme=scheme, ca=tls.cert if tls else None):
            return Server(proc, port, "nginx", scheme)
        stop_process(proc)
        last_err = (d / "nginx.stderr").read_text() + (d / "error.log").read_text()
    pytest.fail(f"nginx did not start: {last_err}")


@pytest.fixture(scope="module")
def nginx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """nginx (master + 1 worker) on a free port: static files, /fail returns 500, no access log."""
    server = _start_nginx(tmp_path_factory.mktemp("nginx"))
    try:
        yield server
    finally:
        stop_process(server.proc)


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> TlsCert:
    """A self-signed certificate and key for localhost / 127.0.0.1; clients trust ``tls_cert.cert`` as CA."""
    return make_tls_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def nginx_tls_server(tmp_path_factory: pytest.TempPathFactory, tls_cert: TlsCert) -> Iterator[Server]:
    """nginx_server over HTTPS (``listen ... ssl``, libssl.so.3's SSL_read/SSL_write); url() gives https URLs."""
    server = _start_nginx(tmp_path_factory.mktemp("nginx-tls"), tls_cert)
    try:
        yield server
    finally:
        stop_process(server.proc)


@pytest.fixture(scope="module")
def py_tls_server(tmp_path_factory: pytest.TempPathFactory, tls_cert: TlsCert) -> Iterator[Server]:
    """servers/app.py over HTTPS (python's ssl: SSL_read_ex/SSL_write_ex); url() gives https URLs."""
    log = tmp_path_factory.mktemp("app-tls") / "app.stderr"
    argv = [PYTHON, str(SERVERS / "app.py"), "--tls-cert", str(tls_cert.cert), "--tls-key", str(tls_cert.key)]
    server = start_server(argv, name="app.py", log=log, scheme="https")
    try:
        yield server
    finally:
        stop_process(server.proc)


@pytest.fixture(scope="module")
def node_https_server(tmp_path_factory: pytest.TempPathFactory, tls_cert: TlsCert) -> Iterator[Server]:
    """servers/node_https.js (node's statically linked OpenSSL); url() gives https URLs."""
    log = tmp_path_factory.mktemp("node-https") / "node.stderr"
    argv = [NODE, str(SERVERS / "node_https.js"), str(tls_cert.cert), str(tls_cert.key)]
    server = start_server(argv, name="node_https.js", log=log, scheme="https")
    try:
        yield server
    finally:
        stop_process(server.proc)


@pytest.fixture(scope="session")
def redis_server_bin() -> str:
    """redis-server's path; make setup installs it with redis-cli, so a missing one is a failure, not a skip."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert server and cli, "redis-server and redis-cli are not installed (make setup installs redis-server)"
    return server


# scripts/docker-engine.sh writes this when it had to start dockerd itself (CI, a fresh machine).
DOCKERD_PIDFILE = Path("/run/otelbpf-dockerd.pid")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the dockerd the container tests started, so that no engine outlives the run (a chroot's mounts)."""
    try:
        pid = int(DOCKERD_PIDFILE.read_text())
        proc = psutil.Process(pid)
        if proc.name() != "dockerd":
            return
        proc.terminate()
        proc.wait(timeout=30)
    except (OSError, ValueError, psutil.Error):
        pass
    DOCKERD_PIDFILE.unlink(missing_ok=True)
