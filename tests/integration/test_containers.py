"""Real containers: their spans carry container.* resource attributes, --container selects them (running
or started later), and host processes are named by the service.name rules."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration.docker_env import (  # noqa: F401 - fixtures
    PYTHON_IMAGE,
    container_name,
    docker_engine,
    inspect,
    python_image,
    run_container,
    wait_listening,
)
from tests.integration.helpers import (
    PYTHON,
    SERVER,
    assert_summary,
    by_pid,
    clean_env,
    curl,
    free_port,
    settle,
    start_server,
    stop_process,
    wait_for_stderr_line,
    wait_idle,
)

pytestmark = pytest.mark.integration

IN_CONTAINER = 3  # requests to the container's server
ON_HOST = 5  # requests to a host server traced in the same run
CONTAINER_KEYS = ("container.", "k8s.")
# --container-scan-interval's default: a container started later is traced within about this long.
SCAN_INTERVAL_S = 1.0


def _start_http_server(start, image: str, name: str, port: int) -> dict:
    """``python3 -m http.server`` in a container on the host's network; its ``docker inspect`` once it listens."""
    start(name, image, "python3", "-m", "http.server", str(port), "--bind", "127.0.0.1")
    wait_listening(port)
    return inspect(name)


def _check_container_spans(spans, info: dict, name: str, port: int) -> None:
    assert len(spans) == IN_CONTAINER, [(s.name, s.resource) for s in spans]
    for s in spans:
        assert s.kind == SERVER
        assert s.attributes["url.path"] == "/etc/hostname"
        assert s.attributes["server.port"] == port
        r = s.resource
        assert r["container.id"] == info["Id"]
        assert len(r["container.id"]) == 64
        assert r["container.name"] == name
        assert r["container.image.name"] == PYTHON_IMAGE
        assert r["container.image.tags"] == ["latest"]
        assert r["container.image.id"] == info["Image"]
        assert r["container.runtime.name"] == "docker"
        # No compose label nor Kubernetes: the container's name names the service.
        assert r["service.name"] == name
        assert r["process.pid"] == info["State"]["Pid"]
        assert r["process.command_line"] == f"python3 -m http.server {port} --bind 127.0.0.1"
        assert not [k for k in r if k.startswith("k8s.")]


@pytest.mark.parametrize("select", ["name", "id-prefix", "port"])
def test_container_spans_carry_the_container(select, python_image, run_container, py_server, otelbpf, receiver):  # noqa: F811 - fixtures
    """A container's server and a host server in one run: exact spans, container.* only on the container's."""
    name, port = container_name(), free_port()
    info = _start_http_server(run_container, python_image, name, port)
    selector = {
        "name": ["--container", name],
        "id-prefix": ["--container", info["Id"][:12]],
        "port": ["--port", str(port)],
    }
    run = otelbpf(*selector[select], "--pid", str(py_server.pid), receiver=receiver)
    for _ in range(IN_CONTAINER):
        curl("-o", "/dev/null", f"http://127.0.0.1:{port}/etc/hostname")
    for i in range(ON_HOST):
        curl("-o", "/dev/null", py_server.url(f"/items/{i}"))
    wait_idle(info["State"]["Pid"])
    wait_idle(py_server.pid)
    settle(receiver, IN_CONTAINER + ON_HOST)
    res = run.stop()
    assert_summary(res, requests=IN_CONTAINER + ON_HOST, exported=IN_CONTAINER + ON_HOST)
    spans = receiver.spans()
    _check_container_spans(by_pid(spans, info["State"]["Pid"]), info, name, port)
    host = by_pid(spans, py_server.pid)
    assert len(host) == ON_HOST
    for s in host:
        assert not [k for k in s.resource if k.startswith(CONTAINER_KEYS)], s.resource
        assert s.resource["service.name"] == "app"  # python3 .../servers/app.py


def test_a_container_started_later_is_traced(python_image, run_container, otelbpf, receiver, capsys):  # noqa: F811 - fixtures
    """--container NAME before the container exists: a warning, then its spans once it runs."""
    name, port = container_name(), free_port()
    run = otelbpf("--container", name, receiver=receiver)
    assert f"container {name} is not running: it will be traced when it starts" in run.stderr()
    started = time.monotonic()
    run_container(name, python_image, "python3", "-m", "http.server", str(port), "--bind", "127.0.0.1")
    running = time.monotonic()  # docker run -d returns once the container's process runs
    wait_for_stderr_line(run, "now tracing pid", "selected container", timeout=10.0)
    picked_up = time.monotonic()
    info = inspect(name)
    wait_listening(port)
    for _ in range(IN_CONTAINER):
        curl("-o", "/dev/null", f"http://127.0.0.1:{port}/etc/hostname")
    wait_idle(info["State"]["Pid"])
    settle(receiver, IN_CONTAINER)
    res = run.stop()
    assert_summary(res, requests=IN_CONTAINER, exported=IN_CONTAINER)
    _check_container_spans(receiver.spans(), info, name, port)
    latency = picked_up - running
    with capsys.disabled():
        print(f"\n  container {name}: docker run took {running - started:.2f} s; traced {latency:.2f} s after it ran")
    # One scan interval, plus the collector's own polling (0.1 s) and a loaded machine's slack.
    assert latency < SCAN_INTERVAL_S + 1.0


def test_service_names_of_host_processes(server_factory, otelbpf, receiver, tmp_path: Path):
    """python3 app.py -> app; python3 -m pkg.mod -> pkg.mod; a process's own OTEL_SERVICE_NAME wins."""
    script = server_factory("app.py")
    own = server_factory("app.py", env=clean_env(OTEL_SERVICE_NAME="checkout"))
    pkg = tmp_path / "shopmod"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "api.py").write_text((Path(__file__).parent / "servers" / "app.py").read_text())
    module = start_server([PYTHON, "-m", "shopmod.api"], env=clean_env(PYTHONPATH=str(tmp_path)))
    try:
        servers = {"app": script, "checkout": own, "shopmod.api": module}
        run = otelbpf(*[a for s in servers.values() for a in ("--pid", str(s.pid))], receiver=receiver)
        for server in servers.values():
            for i in range(IN_CONTAINER):
                curl("-o", "/dev/null", server.url(f"/items/{i}"))
            wait_idle(server.pid)
        total = IN_CONTAINER * len(servers)
        settle(receiver, total)
        res = run.stop()
        assert_summary(res, requests=total, exported=total)
        spans = receiver.spans()
        for service, server in servers.items():
            mine = by_pid(spans, server.pid)
            assert [s.resource["service.name"] for s in mine] == [service] * IN_CONTAINER
            assert not [k for s in mine for k in s.resource if k.startswith(CONTAINER_KEYS)]
    finally:
        stop_process(module.proc)
