"""Test-only helpers for the integration suite: processes, otelbpf runs, summaries and span checks."""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.otlp_receiver import OtlpReceiver, ReceivedSpan

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SERVERS = HERE / "servers"
CLIENTS = HERE / "clients"
PYTHON = sys.executable
NODE = shutil.which("node") or "/usr/bin/node"
VENV = REPO / ".venv"
OTELBPF = str(VENV / "bin" / "otelbpf")
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0

SERVER = 2  # OTLP SpanKind
CLIENT = 3
STATUS_UNSET = 0
STATUS_ERROR = 2


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any OTEL_*/OTELBPF_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTELBPF_"))}
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Terminate a process this suite started, and its children (nginx workers), by pid."""
    if proc.poll() is not None:
        return
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass


def read_port_line(proc: subprocess.Popen, timeout: float = 15.0) -> int:
    """Wait for the "PORT <n>" line a test server prints on stdout once it listens."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        stop_process(proc)
        pytest.fail(f"server {proc.args} did not report its port within {timeout}s")
    line = proc.stdout.readline().decode().strip()
    if not line.startswith("PORT "):
        stop_process(proc)
        pytest.fail(f"server {proc.args} printed {line!r} instead of its port (exit {proc.poll()})")
    return int(line.split()[1])


@dataclass
class Server:
    """A server process started by the suite."""

    proc: subprocess.Popen
    port: int
    script: str = ""
    scheme: str = "http"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"


def start_server(
    argv: Sequence[str],
    *,
    name: str = "",
    env: dict[str, str] | None = None,
    log: Path | None = None,
    scheme: str = "http",
) -> Server:
    """Start a server command that prints "PORT <n>" on stdout once it listens, and wait for that line."""
    with open(log or os.devnull, "wb") as stderr:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env or clean_env(),
        )
    return Server(proc, read_port_line(proc), name, scheme)


def start_script_server(script: Path, *args: str, env: dict[str, str] | None = None, log: Path | None = None) -> Server:
    """Start one of the python scripts in servers/ and wait until it listens."""
    return start_server([PYTHON, str(script), *args], name=script.name, env=env, log=log)


def curl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run curl once (silent, errors shown) and return the finished process."""
    res = subprocess.run(["curl", "-s", "-S", "--max-time", "10", *args], capture_output=True, text=True)
    if check and res.returncode != 0:
        pytest.fail(f"curl {args} failed ({res.returncode}): {res.stderr}")
    return res


class PausedClient:
    """A client process started paused: trace its pid, then let it go.

    By default clients/http_client.py MODE URL...; ``argv`` runs any other command that speaks the same
    protocol on stdin/stdout: print "paused" once ready, read "go", make its requests, print one JSON
    line of results, then stay alive until stdin closes (clients/node_https_client.js,
    clients/late_tls_client.py, clients/run_paused.py).
    """

    def __init__(
        self,
        mode: str = "",
        urls: Sequence[str] = (),
        *,
        argv: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        if argv is None:
            argv = [PYTHON, str(CLIENTS / "http_client.py"), mode, *urls]
        self.proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env or clean_env(),
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()  # imports are done, no socket opened yet
        if line != "paused":
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self.stop()
            pytest.fail(f"client did not pause: {line!r} {err}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def say(self, word: str) -> str:
        """Write one line to the client and return the line it answers with (fails if it exits instead)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{word}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()  # every request has a 10 s timeout in the clients
        if not line:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            pytest.fail(f"client failed after {word!r} ({self.proc.wait()}): {err}")
        return line.strip()

    def go(self) -> Any:
        """Let the client make its requests; return its JSON results. It stays alive until stop()."""
        return json.loads(self.say("go"))

    def stop(self) -> None:
        if self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()  # the client exits when its stdin closes
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            stop_process(self.proc)


def raw_client(*args: str) -> dict:
    """Run clients/raw_client.py to completion; return its JSON result."""
    res = subprocess.run(
        [PYTHON, str(CLIENTS / "raw_client.py"), *args], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    if res.returncode != 0:
        pytest.fail(f"raw client {args} failed ({res.returncode}): {res.stderr}")
    return json.loads(res.stdout)


_SUMMARY_LINE = re.compile(r"^\s*([A-Za-z][^:\n]*):\s+(\d+)\b", re.M)


def parse_summary(stderr: str) -> dict[str, int]:
    """Every "label: N" line of the summary after "otelbpf summary:" (label stripped)."""
    _, sep, tail = stderr.partition("otelbpf summary:")
    if not sep:
        return {}
    return {m.group(1).strip(): int(m.group(2)) for m in _SUMMARY_LINE.finditer(tail)}


@dataclass
class RunResult:
    """How one otelbpf run ended."""

    returncode: int
    stderr: str
    stdout: str
    summary: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0


# The one line otelbpf prints once its probes are attached; "already" or "ready" in a warning is not it.
_READY_LINE = re.compile(r"^otelbpf: ready: tracing .+ \(\d+ processes now\); exporting to .+$", re.M)


class OtelbpfRun:
    """One ``otelbpf run`` (or ``record``) subprocess; stderr/stdout go to files so nothing can block on a pipe."""

    _count = 0

    def __init__(self, args: list[str], env: dict[str, str], workdir: Path, command: str = "run") -> None:
        OtelbpfRun._count += 1
        n = OtelbpfRun._count
        self.args = args
        self.err_path = workdir / f"otelbpf-{n}.stderr"
        self.out_path = workdir / f"otelbpf-{n}.stdout"
        with open(self.err_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [OTELBPF, command, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, cwd=REPO
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait for the "ready" line; fail with otelbpf's stderr if it exits or takes too long."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _READY_LINE.search(self.stderr()):
                return
            if self.proc.poll() is not None:
                pytest.fail(f"otelbpf {self.args} exited with {self.proc.returncode} before ready:\n{self.stderr()}")
            time.sleep(0.05)
        self.kill()
        pytest.fail(f"otelbpf {self.args} not ready after {timeout}s:\n{self.stderr()}")

    def wait(self, timeout: float = STOP_TIMEOUT_S) -> RunResult:
        """Wait for otelbpf to exit by itself."""
        t0 = time.monotonic()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"otelbpf {self.args} did not exit within {timeout}s:\n{self.stderr()}")
        err = self.stderr()
        return RunResult(self.proc.returncode, err, self.stdout(), parse_summary(err), time.monotonic() - t0)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> RunResult:
        """SIGINT (flush and summary), then wait for the exit."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self) -> None:
        """Teardown: SIGINT if still running (probes detach cleanly), SIGKILL if that takes too long."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()


def assert_summary(res: RunResult, *, requests: int, exported: int) -> None:
    """A clean exit whose summary reports exactly these numbers and no loss of any kind."""
    assert res.returncode == 0, res.stderr
    s = res.summary
    assert s.get("requests seen") == requests, res.stderr
    assert s.get("spans exported") == exported, res.stderr
    assert s.get("events lost") == 0, res.stderr
    assert s.get("requests unfinished at exit", 0) == 0, res.stderr


def settle(receiver: OtlpReceiver, expected: int, timeout: float = 10.0) -> None:
    """Wait until ``expected`` spans arrived; the caller stops otelbpf next.

    Nothing more is waited for: stopping drains the kernel and exports every span before otelbpf exits,
    so a span beyond ``expected`` still reaches the receiver and the exact counts checked after the stop
    catch it. Waiting for the expected spans is what guarantees the kernel's records were all read.
    """
    if expected:
        receiver.wait_for(expected, timeout)


def wait_idle(pid: int, timeout: float = 10.0) -> None:
    """Wait until a server (and its children) holds no TCP connection but its listeners.

    By then it has read each client's close and closed its own end, so every syscall it made on those
    connections has returned and the kernel has written every record about them to the ring buffer.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            procs = [psutil.Process(pid)]
            procs += procs[0].children(recursive=True)
        except psutil.NoSuchProcess:
            pytest.fail(f"server pid {pid} exited while the test waited for it to go idle")
        open_conns = []
        for proc in procs:
            try:
                open_conns += [c for c in proc.net_connections(kind="tcp") if c.status != psutil.CONN_LISTEN]
            except psutil.NoSuchProcess:
                pass  # a child that exited holds nothing
        if not open_conns:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"server pid {pid} still has connections after {timeout}s: {open_conns}")
        time.sleep(0.01)


def run_both_traced(server: Server, client: PausedClient, otelbpf, receiver: OtlpReceiver, expected: int):
    """Trace the server and the paused client, let the client go, stop otelbpf once ``expected`` spans
    arrived; (client results, spans, run result, t0, t1) with t0..t1 the wall-clock window of the traffic."""
    try:
        run = otelbpf("--pid", str(server.pid), "--pid", str(client.pid), receiver=receiver)
        t0 = time.time_ns()
        results = client.go()
        t1 = time.time_ns()
        settle(receiver, expected)
        res = run.stop()
    finally:
        client.stop()
    return results, receiver.spans(), res, t0, t1


def by_pid(spans: list[ReceivedSpan], pid: int) -> list[ReceivedSpan]:
    return [s for s in spans if s.resource.get("process.pid") == pid]


def exe_of(pid: int) -> tuple[str, str]:
    """(process.executable.path, expected service.name) for a live process, as psutil sees it.

    The name follows otelbpf.service_name's command-line rule (``python3 app.py`` -> ``app``), which
    tests/unit/test_service_name.py and tests/integration/test_containers.py check literally.
    """
    from otelbpf.service_name import from_command

    proc = psutil.Process(pid)
    exe = proc.exe()
    return exe, from_command(proc.cmdline(), os.path.basename(exe), proc.cwd())


def assert_in_window(spans: list[ReceivedSpan], t0: int, t1: int) -> None:
    """Every span started and ended inside the wall-clock window the test drove requests in."""
    for s in spans:
        assert s.start_ns > 0
        assert t0 <= s.start_ns <= s.end_ns <= t1, (s.name, t0, s.start_ns, s.end_ns, t1)


def all_values(span: ReceivedSpan) -> list[str]:
    """Every exported string of a span: name, status message, attribute and resource values."""
    out = [span.name, span.status_message]
    for attrs in (span.attributes, span.resource):
        for k, v in attrs.items():
            out.append(k)
            out.append(v if isinstance(v, str) else repr(v))
    return out


@dataclass(frozen=True)
class TlsCert:
    """A self-signed certificate for CN=localhost and IP 127.0.0.1; clients trust ``cert`` as their CA file."""

    cert: Path
    key: Path


def make_tls_cert(directory: Path) -> TlsCert:
    """Create a self-signed RSA certificate and key (valid two days) with the openssl CLI."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    # fmt: off
    res = subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        capture_output=True,
        text=True,
    )
    # fmt: on
    if res.returncode != 0:
        pytest.fail(f"openssl req failed ({res.returncode}): {res.stderr}")
    return TlsCert(cert, key)


def mapped_files(pid: int) -> set[str]:
    """Paths of the files a process has mapped, from /proc/PID/maps."""
    out = set()
    with open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith("/"):
                out.add(fields[5].strip())
    return out


def wait_for_stderr_line(run: OtelbpfRun, *parts: str, timeout: float = 15.0) -> str:
    """Wait for a line of otelbpf's stderr that contains every one of ``parts``; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in run.stderr().splitlines():
            if all(part in line for part in parts):
                return line
        if run.proc.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"otelbpf logged no line with {parts} within {timeout}s:\n{run.stderr()}")
