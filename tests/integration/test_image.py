"""The container image: `make image` builds otelbpf:latest, docker-compose.yml's otelbpf service runs it.

Traced from the container: a server in another container, whose spans carry its container.* attributes and
its name as service.name, and a server on the host, whose spans carry none. The build runs once per session
and works on a fresh machine (the base image is then made with debootstrap); Docker itself is installed by
make setup, so a missing engine is a failure here, not a skip.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otelbpf import __version__
from tests.integration.docker_env import container_name, docker, docker_engine, inspect, run_container, wait_listening
from tests.integration.helpers import (
    PYTHON,
    REPO,
    SERVER,
    STATUS_UNSET,
    RunResult,
    assert_summary,
    by_pid,
    clean_env,
    curl,
    free_port,
    parse_summary,
    settle,
    stop_process,
)
from tests.otlp_receiver import OtlpReceiver, ReceivedPoint

pytestmark = pytest.mark.integration
__all__ = ["docker_engine", "run_container"]  # fixtures, imported for pytest

IMAGE = "otelbpf:latest"
PROJECT = "otelbpf-test"
OVERRIDE = Path(__file__).with_name("compose.test.yml")
N_CONTAINER = 7  # primes: a count that comes out right by accident is unlikely
N_HOST = 5
READY_TIMEOUT_S = 120.0  # bcc compiles the programs in the container first

# Capability names by number (linux/capability.h), to name the ones a host cannot grant.
CAPABILITIES = (
    "CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE NET_BIND_SERVICE "
    "NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT "
    "SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP "
    "MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ PERFMON BPF CHECKPOINT_RESTORE"
).split()


def report(config: pytest.Config, line: str) -> None:
    """One line on the terminal as the test runs, captured output or not."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


@pytest.fixture(scope="session")
def image(docker_engine: None, pytestconfig: pytest.Config) -> str:
    """otelbpf:latest from `make image` (idempotent: a cached build takes seconds)."""
    t0 = time.monotonic()
    res = subprocess.run(["make", "image"], cwd=REPO, capture_output=True, text=True, timeout=1800)
    elapsed = time.monotonic() - t0
    if res.returncode != 0:
        pytest.fail(f"make image failed ({res.returncode}) after {elapsed:.0f} s:\n{res.stdout[-4000:]}{res.stderr}")
    size = int(docker("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    report(pytestconfig, f"test_image: make image took {elapsed:.1f} s; {IMAGE} is {size / 1e6:.0f} MB")
    return IMAGE


def missing_capabilities() -> list[str]:
    """Capabilities the kernel has that this host's bounding set lacks (nothing here can grant them)."""
    status = Path("/proc/self/status").read_text()
    bounding = int(re.search(r"^CapBnd:\s+([0-9a-f]+)$", status, re.M).group(1), 16)  # type: ignore[union-attr]
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    return [name for bit, name in enumerate(CAPABILITIES[: last + 1]) if not bounding >> bit & 1]


@pytest.fixture(scope="session")
def compose_files(image: str, pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The -f options: docker-compose.yml, compose.test.yml and, where privileged containers cannot start, one
    more override granting every capability the host has instead of `privileged: true`."""
    files = ["-f", str(REPO / "docker-compose.yml"), "-f", str(OVERRIDE)]
    probe = docker("run", "--rm", "--privileged", "--entrypoint", "true", image, check=False)
    if probe.returncode == 0:
        return files
    missing = missing_capabilities()
    if "unable to apply caps" not in probe.stderr or not missing:
        pytest.fail(f"a privileged container does not start: {probe.stderr.strip()}")
    report(
        pytestconfig,
        f"test_image: privileged containers cannot start here (the host's capability bounding set lacks "
        f"{', '.join(missing)}); the otelbpf service runs with every other capability instead",
    )
    unprivileged = tmp_path_factory.mktemp("compose") / "compose.capabilities.yml"
    unprivileged.write_text(
        "services:\n  otelbpf:\n    privileged: false\n    cap_add: [ALL]\n"
        f"    cap_drop: [{', '.join(missing)}]\n    security_opt: [seccomp=unconfined, apparmor=unconfined]\n"
    )
    return [*files, "-f", str(unprivileged)]


def test_version_and_unprivileged_error(image: str) -> None:
    res = docker("run", "--rm", image, "otelbpf", "--version")
    assert res.stdout == f"otelbpf {__version__}\n", res.stderr

    # Without --privileged: the default command stops at otelbpf's preflight with one line, not a traceback.
    res = docker("run", "--rm", image, check=False)
    assert res.returncode != 0
    lines = [line for line in res.stderr.splitlines() if not line.startswith("otelbpf-entrypoint: kernel headers:")]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("otelbpf: error: ") and "--privileged" in lines[0], res.stderr


class ComposeRun:
    """`docker-compose ... -p otelbpf-test` with the test's environment; the otelbpf service's container."""

    def __init__(self, files: list[str], env: dict[str, str]) -> None:
        self.argv = ["docker-compose", *files, "-p", PROJECT]
        self.env = env

    def __call__(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess:
        res = subprocess.run(
            [*self.argv, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and res.returncode != 0:
            pytest.fail(f"docker-compose {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def container(self) -> str:
        cid = self("ps", "-q", "otelbpf").stdout.strip()
        assert cid, "docker-compose started no otelbpf container"
        return cid

    def logs(self) -> str:
        """The otelbpf container's stdout and stderr, without docker-compose's prefixes."""
        res = docker("logs", self.container())
        return res.stdout + res.stderr

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = self.logs()
            if re.search(r"^otelbpf: ready: ", logs, re.M):
                return
            if not inspect(self.container())["State"]["Running"]:
                pytest.fail(f"the otelbpf service exited before ready:\n{logs}")
            time.sleep(0.2)
        pytest.fail(f"the otelbpf service is not ready after {timeout:.0f} s:\n{self.logs()}")


@pytest.fixture
def host_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """python's http.server on the host, serving an empty directory on a free port."""
    port = free_port()
    (tmp_path / "www").mkdir()
    proc = subprocess.Popen(
        [PYTHON, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=tmp_path / "www",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(),
    )
    try:
        wait_listening(port)
        yield proc, port
    finally:
        stop_process(proc)


def status(url: str) -> str:
    """One GET with curl; the response's status code."""
    return curl("-o", "/dev/null", "-w", "%{http_code}", url).stdout


def server_counts(points: list[ReceivedPoint], pid: int) -> dict[frozenset, int]:
    """Requests per attribute set of one process's server histogram: the newest of each cumulative series."""
    newest: dict[frozenset, ReceivedPoint] = {}
    for p in points:
        if p.resource.get("process.pid") != pid:
            continue
        key = frozenset(p.attributes.items())
        if key not in newest or p.time_ns >= newest[key].time_ns:
            newest[key] = p
    return {k: p.count for k, p in newest.items()}


def test_compose_service_traces_a_container_and_the_host(
    image: str, compose_files: list[str], run_container, host_server, receiver: OtlpReceiver
) -> None:
    # The servers first: otelbpf finds their listeners when it starts.
    web_port = free_port()
    name = container_name("otelbpf-test-web")
    cid = run_container(
        name, image, "-m", "http.server", str(web_port), "--bind", "127.0.0.1", options=("--entrypoint", "python3")
    )
    wait_listening(web_port)
    web_pid = inspect(name)["State"]["Pid"]
    host_proc, host_port = host_server

    compose = ComposeRun(
        compose_files,
        clean_env(
            OTELBPF_TEST_OTLP_ENDPOINT=receiver.grpc_endpoint,
            OTELBPF_TEST_CONTAINER_PORT=str(web_port),
            OTELBPF_TEST_HOST_PORT=str(host_port),
        ),
    )
    try:
        compose("up", "-d", "--no-build", "otelbpf", timeout=300.0)
        compose.wait_ready()
        for i in range(N_CONTAINER):
            assert status(f"http://127.0.0.1:{web_port}/items/{i}") == "404"  # a new connection each time
        for _ in range(N_HOST):
            assert status(f"http://127.0.0.1:{host_port}/") == "200"
        settle(receiver, N_CONTAINER + N_HOST, timeout=20.0)
        assert receiver.wait_for_metrics("http.server.request.duration", timeout_s=10), receiver.metric_requests()
        # docker stop's SIGTERM: otelbpf drains the kernel, exports every span and prints its summary.
        compose("stop", "-t", "30", "otelbpf", timeout=120.0)
        state = inspect(compose.container())["State"]
        logs = compose.logs()
    finally:
        compose("down", "--remove-orphans", check=False, timeout=120.0)

    res = RunResult(state["ExitCode"], logs, "", parse_summary(logs))
    assert_summary(res, requests=N_CONTAINER + N_HOST, exported=N_CONTAINER + N_HOST)
    assert len([line for line in logs.splitlines() if line.startswith("otelbpf-entrypoint: kernel headers: ")]) == 1

    spans = receiver.spans()
    assert len(spans) == N_CONTAINER + N_HOST, [(s.name, s.resource.get("process.pid")) for s in spans]
    in_container, on_host = by_pid(spans, web_pid), by_pid(spans, host_proc.pid)
    assert len(in_container) == N_CONTAINER and len(on_host) == N_HOST

    assert sorted(s.attributes["url.path"] for s in in_container) == sorted(f"/items/{i}" for i in range(N_CONTAINER))
    for s in in_container:
        # The name carries the route (ids collapsed); the metrics below carry it as http.route.
        assert (s.kind, s.name, s.status_code) == (SERVER, "GET /items/{id}", STATUS_UNSET)
        assert s.attributes["http.request.method"] == "GET"
        assert s.attributes["http.response.status_code"] == 404
        assert s.resource["container.id"] == cid
        assert s.resource["container.name"] == name
        assert s.resource["service.name"] == name
    for s in on_host:
        assert (s.kind, s.name, s.status_code) == (SERVER, "GET /", STATUS_UNSET)
        assert s.attributes["http.request.method"] == "GET"
        assert s.attributes["http.response.status_code"] == 200
        assert not [k for k in s.resource if k.startswith("container.")], s.resource
        assert s.resource["service.name"] == "http.server"  # python -m http.server

    # Metrics left the container too: one histogram series per server, with its route and status, exact counts.
    points = receiver.metric_points("http.server.request.duration")
    for pid, route, code, n in ((web_pid, "/items/{id}", 404, N_CONTAINER), (host_proc.pid, "/", 200, N_HOST)):
        series = server_counts(points, pid)
        assert list(series.values()) == [n], series
        attrs = dict(next(iter(series)))
        assert (attrs["http.route"], attrs["http.request.method"], attrs["http.response.status_code"]) == (
            route,
            "GET",
            code,
        )
