"""Fixtures for the integration suite: real eBPF probes, real servers and clients, a real OTLP receiver.

Everything here runs as root; the only skip in the suite is the root check below.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.integration.helpers import (
    SERVERS,
    OtelbpfRun,
    Server,
    clean_env,
    free_port,
    start_script_server,
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
        listen 127.0.0.1:{port};
        root {d}/www;
        location = /fail {{ return 500; }}
    }}
}}
"""

STATIC_FILES = {
    "static.txt": b"static file served by nginx\n" * 20,
    "one.txt": b"one\n",
    "two.txt": b"two two\n",
    "three.txt": b"three three three\n",
}


def _nginx_ready(proc: subprocess.Popen, port: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/one.txt", timeout=2) as resp:
                if resp.status == 200 and psutil.Process(proc.pid).children():
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def nginx_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """nginx (master + 1 worker) on a free port: static files, /fail returns 500, no access log."""
    nginx = shutil.which("nginx")
    assert nginx, "nginx is not installed (make setup installs nginx-light)"
    d = tmp_path_factory.mktemp("nginx")
    (d / "www").mkdir()
    for name, body in STATIC_FILES.items():
        (d / "www" / name).write_bytes(body)
    last_err = ""
    for _ in range(3):  # a free port can be taken between the probe and nginx's bind
        port = free_port()
        conf = d / "nginx.conf"
        conf.write_text(NGINX_CONF.format(d=d, port=port))
        with open(d / "nginx.stderr", "wb") as err:
            proc = subprocess.Popen(
                [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(conf), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        if _nginx_ready(proc, port):
            break
        stop_process(proc)
        last_err = (d / "nginx.stderr").read_text() + (d / "error.log").read_text()
    else:
        pytest.fail(f"nginx did not start: {last_err}")
    try:
        yield Server(proc, port, "nginx")
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def redis_server_bin() -> str | None:
    """redis-server and redis-cli, installed with apt-get if missing; None if that is impossible."""
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        res = subprocess.run(
            ["apt-get", "install", "-y", "-q", "redis-server"], capture_output=True, text=True, env=env, timeout=600
        )
        if res.returncode != 0:
            print(f"apt-get install redis-server failed, using the python echo server only: {res.stderr[-500:]}")
    return shutil.which("redis-server") if shutil.which("redis-cli") else None
