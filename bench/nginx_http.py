"""Benchmark: otelbpf tracing nginx serving a small static file, against the same nginx untraced.

Run as root:  .venv/bin/python bench/nginx_http.py      (or: make bench)
       over HTTPS:  .venv/bin/python bench/nginx_http.py --tls   (or: make bench-https)

One run measures, on this machine:
  * saturation: wrk with no rate limit, untraced and traced alternately (B T B T B); medians of the
    throughput, latency, collector CPU and the in-kernel rate limit's shedding;
  * a fixed ~10k req/s (wrk's Lua delay() hook paces every connection), untraced then traced: loss,
    spans exported per request served, collector CPU per span, and the BPF programs' own run time
    per request (kernel.bpf_stats_enabled);
and prints a markdown table, appended to docs/benchmarks.md unless --no-doc.

With --tls, nginx serves the same file over TLS (a self-signed certificate made with the openssl CLI)
and wrk requests it over https with keep-alive, so the handshakes are amortised. The phases are the
same; the fixed rate drops to half the untraced saturation throughput if that is below the target
rate, and the report adds the TLS uprobe hits per request from otelbpf's exit summary.

Spans go over OTLP/gRPC to bench/span_counter.py, a counting receiver in its own process. It runs on
the same CPUs as nginx, wrk and the collector, so its CPU is reported too.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import json
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
OTELBPF = VENV_BIN / "otelbpf"
PYTHON = VENV_BIN / "python" if (VENV_BIN / "python").exists() else Path(sys.executable)
COUNTER_SCRIPT = ROOT / "bench" / "span_counter.py"
DOC = ROOT / "docs" / "benchmarks.md"
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGET_RATE = 10_000
PROFILE_RATE_HZ = 200
DEFAULT_MAX_SPANS = 20_000  # otelbpf's --max-spans-per-second default
TARGET_US_PER_SPAN = 25.0
TARGET_THROUGHPUT_RATIO = 0.7

NGINX_CONF = """\
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    default_type text/html;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000;
    keepalive_timeout 65;
{tls_http}    server {{
        listen 127.0.0.1:{port}{listen_opts};
{tls_server}        root {tmp}/www;
        location = /nginx_status {{
            stub_status;
        }}
    }}
}}
"""

# The TLS pieces of NGINX_CONF. /tls_check/ serves the same file and logs what each request negotiated,
# so the report can say which protocol and cipher wrk used (its warm-up goes there).
NGINX_TLS_HTTP = """\
    log_format tls_check '$ssl_protocol $ssl_cipher';
"""
NGINX_TLS_SERVER = """\
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location /tls_check/ {{
            alias {tmp}/www/;
            access_log {tmp}/tls_check.log tls_check;
        }}
"""

OPENSSL_REQ = (
    "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost -addext subjectAltName=IP:127.0.0.1"
)

PACED_LUA = """\
-- Each connection waits this long after every response before its next request.
function delay()
    return {delay_ms}
end
"""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes


class Procs:
    """Every process the benchmark starts, each in its own process group, killed on exit."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen] = []

    def start(self, cmd: list[str], **kw: object) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, start_new_session=True, **kw)  # type: ignore[call-overload]
        self._procs.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in reversed(self._procs):
            if proc.returncode is not None:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in reversed(self._procs):
            if proc.returncode is not None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except (subprocess.TimeoutExpired, ChildProcessError):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
                    proc.wait(2)


def rss_kib(pid: int) -> tuple[int, int]:
    """A process's resident set now and its peak (VmRSS, VmHWM), in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def cpu_us(pid: int) -> float:
    """utime + stime of a process (all its threads), in microseconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) * 1e6 / CLK_TCK


def machine_cpu_us() -> tuple[float, float]:
    """(task time, steal) of the whole machine since boot, in microseconds, from /proc/stat.

    Task time is user + nice + system: interrupt and softirq time (the loopback network path, mostly)
    is accounted apart from the tasks, so it is left out on both sides of the comparison."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = v[:8]
    scale = 1e6 / CLK_TCK
    return (user + nice + system) * scale, steal * scale


def process_tree(pid: int) -> list[int]:
    """A process and its children (nginx master and workers)."""
    out = [pid]
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
    return out


class Meter:
    """CPU of everything else on the machine during a window: busy time not spent by our processes.

    Our processes are the given pids plus the children reaped meanwhile (wrk). Other tenants' work
    shows up here and makes a window unrepresentative; steal is time the hypervisor gave elsewhere."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.t0 = time.monotonic()
        self.busy0, self.steal0 = machine_cpu_us()
        self.ours0 = self._ours()

    def _ours(self) -> float:
        total = 0.0
        for pid in self.pids:
            with contextlib.suppress(OSError):
                total += cpu_us(pid)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return total + (ru.ru_utime + ru.ru_stime) * 1e6

    def stop(self) -> tuple[float, float]:
        """(other CPU, steal), each in % of one CPU."""
        wall = time.monotonic() - self.t0
        busy, steal = machine_cpu_us()
        other = (busy - self.busy0) - (self._ours() - self.ours0)
        return max(0.0, other) / wall / 1e4, (steal - self.steal0) / wall / 1e4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


class LineReader:
    """Reads a pipe line by line on a thread; keeps every line and queues them for waiting."""

    def __init__(self, stream) -> None:  # noqa: ANN001 - a text-mode pipe
        self.lines: list[str] = []
        self.queue: queue.Queue[str] = queue.Queue()
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream) -> None:  # noqa: ANN001
        for line in stream:
            line = line.rstrip("\n")
            self.lines.append(line)
            self.queue.put(line)
        self.queue.put("")  # EOF marker

    def wait_for(self, pattern: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no line matching {pattern!r} within {timeout_s}s")
            try:
                line = self.queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if re.search(pattern, line):
                return line
            if line == "" and not self._thread.is_alive():
                raise RuntimeError(f"stream ended before {pattern!r}; last lines: {self.lines[-15:]}")

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)


# ---------------------------------------------------------------- nginx, receiver, otelbpf


def self_signed_cert(tmp: Path) -> tuple[Path, Path]:
    """A throwaway certificate and key for 127.0.0.1, made with the openssl CLI."""
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [*OPENSSL_REQ.split(), "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True, timeout=60
    )
    return cert, key


class Nginx:
    """nginx with one worker serving a small static file on loopback, over http or (tls=True) https."""

    def __init__(self, procs: Procs, tmp: Path, tls: bool = False) -> None:
        self.port = free_port()
        self.tls = tls
        www = tmp / "www"
        www.mkdir()
        body = "<!doctype html><html><head><title>otelbpf bench</title></head><body>\n"
        body += "<p>" + "static content for the benchmark. " * 14 + "</p>\n</body></html>\n"
        (www / "index.html").write_text(body)
        self.body_bytes = len(body)
        self.tls_check_log = tmp / "tls_check.log"
        tls_http = tls_server = listen_opts = ""
        if tls:
            cert, key = self_signed_cert(tmp)
            tls_http = NGINX_TLS_HTTP
            tls_server = NGINX_TLS_SERVER.format(cert=cert, key=key, tmp=tmp)
            listen_opts = " ssl"
        conf = tmp / "nginx.conf"
        conf.write_text(
            NGINX_CONF.format(
                tmp=tmp, port=self.port, listen_opts=listen_opts, tls_http=tls_http, tls_server=tls_server
            )
        )
        os.chmod(tmp, 0o755)  # the worker runs as nobody and must read www/
        self.proc = procs.start(
            ["nginx", "-c", str(conf), "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        # Only for the benchmark's own probes (readiness, stub_status): the certificate is self-signed.
        self._ssl = ssl._create_unverified_context() if tls else None
        wait_port(self.port)
        if tls:
            self._wait_https()
        self.url = f"{self.base}/index.html"
        self.tls_check_url = f"{self.base}/tls_check/index.html"

    @property
    def master_pid(self) -> int:
        return self.proc.pid

    def _get(self, path: str) -> bytes:
        with urllib.request.urlopen(f"{self.base}{path}", timeout=5, context=self._ssl) as r:
            return r.read()

    def _wait_https(self, timeout_s: float = 10.0) -> None:
        """The port accepting connections is not enough: the TLS handshake and a 200 must work too."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._get("/index.html")
                return
            except OSError as e:  # URLError and ssl.SSLError are OSErrors
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nginx on {self.base} does not answer over https: {e}") from e
                time.sleep(0.1)

    def negotiated(self) -> Counter[str]:
        """What the requests to /tls_check/ negotiated ("TLSv1.3 TLS_AES_256_GCM_SHA384" -> count)."""
        with contextlib.suppress(OSError):
            return Counter(self.tls_check_log.read_text().splitlines())
        return Counter()

    def requests_total(self) -> int:
        """stub_status's request counter. It counts the status request itself, so the requests between two
        reads are the difference minus one."""
        text = self._get("/nginx_status").decode()
        # "Active connections: 1\nserver accepts handled requests\n 1 1 1\n..."
        return int(text.splitlines()[2].split()[2])


class SpanCounter:
    """bench/span_counter.py in its own process; counts only."""

    def __init__(self, procs: Procs) -> None:
        self.proc = procs.start(
            [str(PYTHON), str(COUNTER_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.out = LineReader(self.proc.stdout)
        self.endpoint = self.out.wait_for(r"^endpoint ", 30).split()[1]

    def count(self) -> int:
        os.kill(self.proc.pid, signal.SIGUSR1)
        return int(self.out.wait_for(r"^count ", 10).split()[1])

    def settled_count(self, timeout_s: float = 10.0) -> int:
        """The count once it stops moving (exports in flight have landed)."""
        last = self.count()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = self.count()
            if now == last:
                return now
            last = now
        return last

    def cpu_us(self) -> float:
        return cpu_us(self.proc.pid)


@dataclass
class OtelbpfResult:
    cpu_after_ready_us: float = 0.0  # utime+stime from "ready" to exit (includes the final flush)
    summary: dict[str, int] = field(default_factory=dict)
    lost_reasons: dict[str, int] = field(default_factory=dict)
    stderr_tail: list[str] = field(default_factory=list)
    tls_uprobe_hits: int | None = None  # None: otelbpf did not print the line
    tls_libraries: int | None = None


class Otelbpf:
    """`otelbpf run --pid <nginx master>` exporting to the counter; stopped with SIGINT."""

    def __init__(self, procs: Procs, target_pid: int, endpoint: str, extra: list[str] | None = None) -> None:
        cmd = [
            str(OTELBPF),
            "run",
            "--pid",
            str(target_pid),
            "--otlp-endpoint",
            endpoint,
            "--otlp-protocol",
            "grpc",
            *(extra or []),
        ]
        t0 = time.monotonic()
        self.proc = procs.start(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.err = LineReader(self.proc.stderr)
        self.err.wait_for(r"\bready\b", 180)
        self.startup_s = time.monotonic() - t0
        self.cpu_at_ready = cpu_us(self.proc.pid)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout_s: float = 60.0) -> OtelbpfResult:
        os.kill(self.proc.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        rusage = None
        while time.monotonic() < deadline:
            pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                rusage = ru
                break
            time.sleep(0.05)
        if rusage is None:
            raise RuntimeError("otelbpf did not exit within {timeout_s}s of SIGINT")
        self.err.join(5)
        total_us = (rusage.ru_utime + rusage.ru_stime) * 1e6
        res = OtelbpfResult(cpu_after_ready_us=total_us - self.cpu_at_ready, stderr_tail=self.err.lines[-25:])
        res.summary, res.lost_reasons = parse_summary(self.err.lines)
        res.tls_uprobe_hits = summary_number(self.err.lines, TLS_HITS_LINE)
        res.tls_libraries = summary_number(self.err.lines, TLS_LIBS_LINE)
        if self.proc.returncode != 0:
            raise RuntimeError(f"otelbpf exited with {self.proc.returncode}: {res.stderr_tail}")
        return res


def parse_summary(lines: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """The numbers of otelbpf's exit summary: top-level lines, and the per-reason loss lines."""
    summary: dict[str, int] = {}
    reasons: dict[str, int] = {}
    try:
        start = max(i for i, line in enumerate(lines) if line.startswith("otelbpf summary:"))
    except ValueError:
        raise RuntimeError(f"no summary in otelbpf's output: {lines[-15:]}") from None
    for line in lines[start + 1 :]:
        m = re.match(r"^( +)(.+?):\s+(\d+)", line)
        if not m:
            continue
        indent, key, value = len(m.group(1)), m.group(2).strip(), int(m.group(3))
        if indent >= 4:
            reasons[key] = value
        else:
            summary[key] = value
    return summary, reasons


# Lines of otelbpf's exit summary that only the TLS support prints; either may be absent.
TLS_HITS_LINE = "TLS uprobe hits (all processes)"
TLS_LIBS_LINE = "TLS libraries attached"


def summary_number(lines: list[str], name: str) -> int | None:
    """The number on the last line "<name>: N" of otelbpf's output (any indentation, digits may be grouped
    with commas), or None if there is no such line."""
    pattern = re.compile(rf"^\s*{re.escape(name)}:\s+(\d[\d,]*)\b")
    for line in reversed(lines):
        m = pattern.match(line)
        if m:
            return int(m.group(1).replace(",", ""))
    return None


def reason(reasons: dict[str, int], prefix: str) -> int:
    return sum(v for k, v in reasons.items() if k.startswith(prefix))


# ---------------------------------------------------------------- wrk


@dataclass
class WrkResult:
    requests: int
    seconds: float
    rps: float
    lat_avg_ms: float
    lat_p50_ms: float
    lat_p99_ms: float
    errors: int
    non2xx: int


def _ms(value: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", value)
    if not m:
        raise ValueError(value)
    scale = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}[m.group(2)]
    return float(m.group(1)) * scale


def run_wrk(url: str, connections: int, seconds: float, script: Path | None = None) -> WrkResult:
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "--timeout", "5s"]
    if script:
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], check=True, capture_output=True, text=True, timeout=seconds + 60).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if not m:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    secs = float(m.group(2)) * (60 if m.group(3) == "m" else 1) if m.group(3) != "ms" else float(m.group(2)) / 1e3
    lat = re.search(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return WrkResult(
        requests=int(m.group(1)),
        seconds=secs,
        rps=float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        lat_avg_ms=_ms(lat.group(1)) if lat else float("nan"),
        lat_p50_ms=_ms(p50.group(1)) if p50 else float("nan"),
        lat_p99_ms=_ms(p99.group(1)) if p99 else float("nan"),
        errors=sum(int(x) for x in errs.groups()) if errs else 0,
        non2xx=int(non2xx.group(1)) if non2xx else 0,
    )


# ---------------------------------------------------------------- BPF run-time statistics


def bpf_progs() -> list[dict]:
    out = subprocess.run(["bpftool", "prog", "show", "-j"], check=True, capture_output=True, text=True).stdout
    return json.loads(out or "[]")


def prog_ids_of(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds file descriptors to (from /proc/<pid>/fdinfo)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:bpf-prog":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
    return ids


# bpftool's program types for what otelbpf attaches: syscall tracepoints, and uprobes (which the kernel
# runs as kprobe-type programs).
PROBE_PROG_TYPES = ("tracepoint", "kprobe")


def otelbpf_progs(pid: int) -> dict[int, dict]:
    """The tracepoint and uprobe programs loaded by this otelbpf process, by id, as `bpftool prog show`
    reports them, with "attach" set to where each is attached (`bpftool perf show`: the tracepoint, or
    "uprobe SSL_read"; absent for tail-call targets)."""
    ids = prog_ids_of(pid)
    progs = {
        p["id"]: p
        for p in bpf_progs()
        if p.get("type") in PROBE_PROG_TYPES
        and (p["id"] in ids or any(h.get("pid") == pid for h in p.get("pids") or []))
    }
    with contextlib.suppress(subprocess.SubprocessError, ValueError, OSError):
        out = subprocess.run(["bpftool", "perf", "show", "-j"], check=True, capture_output=True, text=True).stdout
        for link in json.loads(out or "[]"):
            if link.get("pid") != pid or link.get("prog_id") not in progs:
                continue
            if "tracepoint" in link:
                where = link["tracepoint"]
            elif "filename" in link:
                where = f"{link.get('fd_type', 'uprobe')} {elf_symbol(link['filename'], link.get('offset', 0))}"
            else:
                continue
            progs[link["prog_id"]].setdefault("attach_points", set()).add(where)
    for prog in progs.values():
        # One uprobe program may sit on several functions and libraries: "uretprobe SSL_read, SSL_write".
        by_kind: dict[str, list[str]] = {}
        for where in sorted(prog.pop("attach_points", ())):
            kind, _, what = where.partition(" ") if "probe " in where else ("", "", where)
            by_kind.setdefault(kind, []).append(what)
        if by_kind:
            prog["attach"] = "; ".join(f"{kind} {', '.join(w)}".strip() for kind, w in by_kind.items())
    return progs


@functools.cache
def elf_symbol(path: str, offset: int) -> str:
    """The dynamic symbol at a file offset of a shared library, as uprobes are placed ("SSL_read"), else
    "libssl.so.3+0x3a2f0". Uses readelf and nm from binutils."""
    fallback = f"{os.path.basename(path)}+{offset:#x}"
    try:
        segs = subprocess.run(["readelf", "-lW", path], check=True, capture_output=True, text=True).stdout
        syms = subprocess.run(["nm", "-D", "--defined-only", path], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.SubprocessError):
        return fallback
    vaddr = None
    for m in re.finditer(r"^\s*LOAD\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x[0-9a-f]+\s+0x([0-9a-f]+)", segs, re.M):
        seg_off, seg_vaddr, filesz = (int(x, 16) for x in m.groups())
        if seg_off <= offset < seg_off + filesz:
            vaddr = offset - seg_off + seg_vaddr
            break
    for line in syms.splitlines():
        parts = line.split()
        if vaddr is not None and len(parts) == 3 and parts[1] in ("T", "t", "W", "i") and int(parts[0], 16) == vaddr:
            return parts[2].split("@")[0]
    return fallback


@contextlib.contextmanager
def bpf_stats_enabled():
    path = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = path.read_text().strip()
    subprocess.run(["sysctl", "-q", "-w", "kernel.bpf_stats_enabled=1"], check=True)
    try:
        yield
    finally:
        subprocess.run(["sysctl", "-q", "-w", f"kernel.bpf_stats_enabled={old}"], check=False)


def bpf_totals(progs: dict[int, dict]) -> tuple[int, int]:
    return (sum(p.get("run_time_ns", 0) for p in progs.values()), sum(p.get("run_cnt", 0) for p in progs.values()))


def bpf_breakdown(before: dict[int, dict], after: dict[int, dict]) -> list[tuple[str, int, int]]:
    """(program name, run-time ns, runs) deltas per program, busiest first."""
    out = []
    for pid_, p in after.items():
        b = before.get(pid_, {})
        ns = p.get("run_time_ns", 0) - b.get("run_time_ns", 0)
        cnt = p.get("run_cnt", 0) - b.get("run_cnt", 0)
        if cnt:
            out.append((p.get("attach") or p.get("name", str(pid_)), ns, cnt))
    return sorted(out, key=lambda x: -x[1])


def foreign_progs(ours: int | None = None) -> int:
    """Tracepoint and uprobe programs loaded now by anything but our collector (pid `ours`): another
    otelbpf, say, whose probes run on nginx's and wrk's syscalls and TLS calls in every window."""
    mine = prog_ids_of(ours) if ours else set()
    with contextlib.suppress(subprocess.SubprocessError, ValueError, OSError):
        return sum(1 for p in bpf_progs() if p.get("type") in PROBE_PROG_TYPES and p["id"] not in mine)
    return 0


def uprobes(progs: dict[int, dict]) -> dict[int, dict]:
    return {i: p for i, p in progs.items() if p.get("type") == "kprobe"}


def recursion_misses(progs: dict[int, dict]) -> int:
    """Runs the kernel skipped because another BPF program was running on that CPU."""
    return sum(p.get("recursion_misses", 0) for p in progs.values())


# ---------------------------------------------------------------- the runs


@dataclass
class Run:
    """One wrk window, untraced or traced."""

    label: str
    traced: bool
    wrk: WrkResult
    served: int  # nginx's own count of requests in the window (stub_status)
    spans: int = 0  # spans the receiver counted for the window
    collector_cpu_window_us: float = 0.0  # otelbpf CPU during the wrk window only
    collector_cpu_total_us: float = 0.0  # otelbpf CPU from ready to exit
    receiver_cpu_us: float = 0.0
    collector_rss_kib: tuple[int, int] = (0, 0)  # otelbpf's VmRSS at the end of the window, and its peak (VmHWM)
    otelbpf_startup_s: float = 0.0
    summary: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    bpf_ns: int = 0
    bpf_runs: int = 0
    bpf_progs: int = 0
    bpf_by_prog: list[tuple[str, int, int]] = field(default_factory=list)
    recursion_misses: int = 0
    other_cpu_pct: float = 0.0  # CPU used by processes outside the benchmark during the window
    steal_pct: float = 0.0
    tls_uprobe_hits: int | None = None  # from otelbpf's summary; None if it did not say
    tls_libraries: int | None = None
    uprobe_runs: int = 0  # runs of otelbpf's uprobe programs (bpf_stats), wrk's library calls included
    foreign_progs: int = 0  # other tools' tracepoint and uprobe programs loaded at the end of the window

    @property
    def lost(self) -> int:
        return self.summary.get("events lost", 0)

    @property
    def shed(self) -> int:
        return reason(self.reasons, "shed in the kernel")


class Bench:
    def __init__(self, procs: Procs, nginx: Nginx, counter: SpanCounter, tmp: Path, extra: list[str]) -> None:
        self.procs = procs
        self.nginx = nginx
        self.counter = counter
        self.tmp = tmp
        self.extra = extra
        self.log_prefix = "otelbpf-bench-tls-" if nginx.tls else "otelbpf-bench-"

    def untraced(self, label: str, connections: int, seconds: float, script: Path | None = None) -> Run:
        before = self.nginx.requests_total()
        meter = Meter([*process_tree(self.nginx.master_pid), self.counter.proc.pid])
        wrk = run_wrk(self.nginx.url, connections, seconds, script)
        other, steal = meter.stop()
        foreign = foreign_progs()
        served = self.nginx.requests_total() - before - 1
        log(
            f"{label}: {wrk.rps:,.0f} req/s, {served} served, p99 {wrk.lat_p99_ms:.2f} ms; "
            f"other CPU {other:.0f}%, steal {steal:.0f}%" + (f"; {foreign} foreign BPF programs" if foreign else "")
        )
        return Run(label, False, wrk, served, other_cpu_pct=other, steal_pct=steal, foreign_progs=foreign)

    def hooks_only(self, label: str, connections: int, seconds: float) -> Run:
        """The probes attached but tracing another (idle) process: the cost of the hooks alone for nginx.

        TLS probes go on per process (--tls-attach per-process): auto would hook the system's TLS
        libraries file-wide for an idle --pid that maps none (it might start TLS programs later)."""
        idle = self.procs.start(["sleep", "3600"])
        before = self.nginx.requests_total()
        extra = [*self.extra, "--tls-attach", "per-process"] if "--tls-attach" not in self.extra else self.extra
        tracer = Otelbpf(self.procs, idle.pid, self.counter.endpoint, extra)
        try:
            cpu0 = cpu_us(tracer.pid)
            meter = Meter([*process_tree(self.nginx.master_pid), self.counter.proc.pid, tracer.pid])
            wrk = run_wrk(self.nginx.url, connections, seconds)
            other, steal = meter.stop()
            cpu1 = cpu_us(tracer.pid)
            foreign = foreign_progs(tracer.pid)
        finally:
            res = tracer.stop()
            os.kill(idle.pid, signal.SIGTERM)
            idle.wait(5)
        served = self.nginx.requests_total() - before - 1
        log(
            f"{label}: {wrk.rps:,.0f} req/s, {served} served, seen {res.summary.get('requests seen')}, "
            f"collector {(cpu1 - cpu0) / 1e4 / wrk.seconds:.0f}% CPU; other CPU {other:.0f}%"
            + self._tls_log(res, served)
        )
        return Run(
            label,
            True,
            wrk,
            served,
            collector_cpu_window_us=cpu1 - cpu0,
            summary=res.summary,
            other_cpu_pct=other,
            steal_pct=steal,
            tls_uprobe_hits=res.tls_uprobe_hits,
            tls_libraries=res.tls_libraries,
            foreign_progs=foreign,
        )

    def _tls_log(self, res: OtelbpfResult, served: int) -> str:
        if not self.nginx.tls:
            return ""
        hits = "n/a" if res.tls_uprobe_hits is None else f"{res.tls_uprobe_hits / max(served, 1):.2f}"
        libs = "n/a" if res.tls_libraries is None else res.tls_libraries
        return f"; TLS uprobe hits per request {hits}, TLS libraries attached {libs}"

    def traced(
        self,
        label: str,
        connections: int,
        seconds: float,
        script: Path | None = None,
        bpf_stats: bool = False,
        profile: Path | None = None,
        extra_args: list[str] | None = None,
    ) -> Run:
        spans0 = self.counter.settled_count(2.0)
        before = self.nginx.requests_total()  # read while untraced, so it is no span
        tracer = Otelbpf(self.procs, self.nginx.master_pid, self.counter.endpoint, [*self.extra, *(extra_args or [])])
        try:
            progs0 = otelbpf_progs(tracer.pid)
            rcv0 = self.counter.cpu_us()
            cpu0 = cpu_us(tracer.pid)
            spy = None
            if profile is not None:
                spy = self.procs.start(
                    [
                        str(VENV_BIN / "py-spy"),
                        "record",
                        "--pid",
                        str(tracer.pid),
                        "--format",
                        "raw",
                        "--output",
                        str(profile),
                        "--rate",
                        str(PROFILE_RATE_HZ),
                        "--nonblocking",
                        "--gil",  # only samples of the thread running Python: where the interpreter's time goes
                        "--duration",
                        str(int(seconds)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            meter = Meter([*process_tree(self.nginx.master_pid), self.counter.proc.pid, tracer.pid])
            wrk = run_wrk(self.nginx.url, connections, seconds, script)
            other, steal = meter.stop()
            cpu1 = cpu_us(tracer.pid)
            rss = rss_kib(tracer.pid)
            rcv1 = self.counter.cpu_us()
            progs1 = otelbpf_progs(tracer.pid)
            foreign = foreign_progs(tracer.pid)
            if spy is not None:
                spy.wait(30)
            time.sleep(0.5)  # let the last responses reach the ring
        except BaseException:
            with contextlib.suppress(Exception):
                tracer.stop(10)
            raise
        res = tracer.stop()
        # Keep the collector's own words (governor decisions, warnings, summary) for each run.
        tracer_log = Path("/tmp") / f"{self.log_prefix}{label.replace(' ', '-').replace('#', '')}.log"
        tracer_log.write_text("\n".join(tracer.err.lines) + "\n")
        served = self.nginx.requests_total() - before - 1
        spans = self.counter.settled_count() - spans0
        run = Run(
            label,
            True,
            wrk,
            served,
            spans=spans,
            collector_cpu_window_us=cpu1 - cpu0,
            collector_cpu_total_us=res.cpu_after_ready_us,
            receiver_cpu_us=rcv1 - rcv0,
            collector_rss_kib=rss,
            otelbpf_startup_s=tracer.startup_s,
            summary=res.summary,
            reasons=res.lost_reasons,
            other_cpu_pct=other,
            steal_pct=steal,
            tls_uprobe_hits=res.tls_uprobe_hits,
            tls_libraries=res.tls_libraries,
            foreign_progs=foreign,
        )
        if bpf_stats:
            ns0, cnt0 = bpf_totals(progs0)
            ns1, cnt1 = bpf_totals(progs1)
            run.bpf_ns, run.bpf_runs, run.bpf_progs = ns1 - ns0, cnt1 - cnt0, len(progs1)
            run.bpf_by_prog = bpf_breakdown(progs0, progs1)
            run.uprobe_runs = bpf_totals(uprobes(progs1))[1] - bpf_totals(uprobes(progs0))[1]
        run.recursion_misses = recursion_misses(progs1) - recursion_misses(progs0)
        log(
            f"{label}: {wrk.rps:,.0f} req/s, {served} served, {spans} spans, "
            f"seen {run.summary.get('requests seen')}, lost {run.lost} (shed {run.shed}), "
            f"collector {run.collector_cpu_window_us / 1e6 / wrk.seconds * 100:.0f}% CPU, "
            f"p99 {wrk.lat_p99_ms:.2f} ms, startup {tracer.startup_s:.1f}s; other CPU {other:.0f}%, steal {steal:.0f}%"
            + self._tls_log(res, served)
        )
        return run


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def calibrate(
    bench: Bench, script: Path, delay_ms: int, seconds: float, rate: int = TARGET_RATE
) -> tuple[int, WrkResult]:
    """Connections (each paced by delay()) for ~rate req/s untraced."""
    conns = max(1, round(rate * delay_ms / 1000))
    best = None
    for _ in range(3):
        res = run_wrk(bench.nginx.url, conns, seconds, script)
        log(f"calibrate: {conns} connections -> {res.rps:,.0f} req/s")
        best = (conns, res)
        if abs(res.rps - rate) / rate <= 0.02:
            break
        conns = max(1, round(conns * rate / res.rps))
    assert best is not None
    return best


def half_of(saturation_rps: float) -> int:
    """Half the untraced saturation throughput, in whole hundreds: a rate the server has headroom for."""
    return max(100, int(round(saturation_rps / 2, -2)))


def rate_name(rate: int) -> str:
    return f"{rate / 1000:g}k"  # 10000 -> "10k", 4500 -> "4.5k"


# ---------------------------------------------------------------- profile


def profile_top(raw: Path, n: int = 10) -> tuple[list[tuple[str, float]], int]:
    """Own-time share of the leaf frames of a py-spy raw (collapsed) profile."""
    own: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = re.sub(r":\d+\)$", ")", stack.split(";")[-1])  # one row per function, not per line
        own[leaf] += int(count)
        total += int(count)
    return [(f, c / total * 100) for f, c in own.most_common(n)], total


# ---------------------------------------------------------------- report


def machine() -> dict[str, str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": str(os.cpu_count()),
        "kernel": platform.release(),
        "cpu": model,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nginx": subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip().split("/")[-1],
        "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1],
        "python": platform.python_version(),
    }


def openssl_version() -> str:
    return subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip() or "OpenSSL (unknown)"


def fmt(x: float, digits: int = 0) -> str:
    if x != x:  # NaN
        return "n/a"
    return f"{x:,.{digits}f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


@dataclass
class TlsSetup:
    """The TLS side of a --tls run, for the report."""

    openssl: str  # `openssl version`
    negotiated: Counter[str]  # "TLSv1.3 TLS_AES_256_GCM_SHA384" -> requests of wrk's warm-up that used it

    def protocol(self) -> str:
        """ "TLS 1.3" when every logged request negotiated it, else what they did negotiate."""
        protos = sorted({line.split()[0] for line in self.negotiated if line.split()})
        return ", ".join(p.replace("TLSv", "TLS ") for p in protos) or "TLS, protocol not logged"

    def negotiated_text(self) -> str:
        total = sum(self.negotiated.values())
        if not total:
            return "nginx logged no request of wrk's warm-up, so the negotiated protocol is unknown"
        if len(self.negotiated) == 1:
            return f"wrk negotiated {next(iter(self.negotiated))} on all {fmt(total)} requests of its warm-up"
        parts = [f"{k} on {fmt(n)}" for k, n in self.negotiated.most_common()]
        return f"wrk negotiated {', '.join(parts)} of the {fmt(total)} requests of its warm-up"


def report(
    cmd: str,
    env: dict[str, str],
    notes: list[str],
    sat_base: list[Run],
    sat_traced: list[Run],
    hooks: Run,
    sat_conns: int,
    body_bytes: int,
    paced_conns: int,
    delay_ms: int,
    base10: Run,
    traced10: Run,
    nolimit10: Run | None,
    tcp_off10: Run | None,
    profile: tuple[list[tuple[str, float]], int] | None,
    profile_seconds: float,
    rate: int = TARGET_RATE,
    rate_note: str | None = None,
    tls: TlsSetup | None = None,
) -> str:
    seconds_sat = sat_base[0].wrk.seconds
    b_rps = median([r.wrk.rps for r in sat_base])
    t_rps = median([r.wrk.rps for r in sat_traced])
    ratio = t_rps / b_rps
    sat_cpu = median([r.collector_cpu_window_us / 1e6 / r.wrk.seconds * 100 for r in sat_traced])
    sat_rcv = median([r.receiver_cpu_us / 1e6 / r.wrk.seconds * 100 for r in sat_traced])
    sat_shed = [r.shed for r in sat_traced]
    sat_lost = [r.lost for r in sat_traced]
    hooks_cpu = hooks.collector_cpu_window_us / 1e4 / hooks.wrk.seconds
    sat_spans_rate = median([r.spans / r.wrk.seconds for r in sat_traced])
    sat_spans_ratio = median([r.spans / r.served for r in sat_traced if r.served])

    t = traced10
    spans_per_req = t.spans / t.served if t.served else float("nan")
    us_per_span = t.collector_cpu_total_us / t.spans if t.spans else float("nan")

    cols = [("untraced", None), ("traced (defaults)", traced10)]
    if tcp_off10 is not None:
        cols.append(("traced, --no-tcp-facts", tcp_off10))
    if nolimit10 is not None:
        cols.append(("traced, --max-spans-per-second 0", nolimit10))

    def row(name: str, untraced: str, traced: Callable[[Run], str]) -> str:
        cells = [untraced] + [traced(r) for _, r in cols[1:]]  # type: ignore[arg-type]
        return f"| {name} | " + " | ".join(cells) + " |"

    def per(a: float, b: float, digits: int = 1) -> str:
        return fmt(a / b, digits) if b else "n/a"

    def tls_hits(r: Run) -> str:
        return "n/a" if r.tls_uprobe_hits is None else per(r.tls_uprobe_hits, r.served, 2)

    def tls_libs(r: Run) -> str:
        return "n/a" if r.tls_libraries is None else fmt(r.tls_libraries)

    if tls is None:
        lines = [
            f"## nginx static file, HTTP/1.1 keep-alive ({env['date']})",
            "",
            f"Command: `{cmd}`",
            "",
            f"Machine: {env['nproc']} CPUs ({env['cpu']}), kernel {env['kernel']}; nginx {env['nginx']} "
            f"(1 worker, a {body_bytes}-byte static file), wrk {env['wrk']} (1 thread), Python {env['python']}. "
            "nginx, wrk, the collector and the OTLP receiver share these CPUs.",
            "",
        ]
    else:
        lines = [
            f"## nginx static file over HTTPS ({tls.protocol()} keep-alive) ({env['date']})",
            "",
            f"Command: `{cmd}`",
            "",
            f"Machine: {env['nproc']} CPUs ({env['cpu']}), kernel {env['kernel']}; nginx {env['nginx']} "
            f"(1 worker, a {body_bytes}-byte static file over TLS with a self-signed RSA-2048 certificate, "
            f"ssl_protocols TLSv1.2 TLSv1.3), wrk {env['wrk']} (1 thread), {tls.openssl} (nginx and wrk both "
            f"link libssl.so.3), Python {env['python']}. nginx, wrk, the collector and the OTLP receiver share "
            "these CPUs.",
            "",
            tls.negotiated_text() + " (nginx logs the protocol and cipher of each request to /tls_check/).",
            "",
        ]
    lines += [
        f"### Saturation: `wrk -t1 -c{sat_conns}`, {seconds_sat:.0f} s windows, "
        f"{len(sat_base)} untraced and {len(sat_traced)} traced alternated (medians)",
        "",
        "| | untraced | traced |",
        "|---|---:|---:|",
        f"| throughput (req/s) | {fmt(b_rps)} | {fmt(t_rps)} |",
        f"| each window (req/s) | {', '.join(fmt(r.wrk.rps) for r in sat_base)} "
        f"| {', '.join(fmt(r.wrk.rps) for r in sat_traced)} |",
        f"| latency p50 / p99 (ms) | {fmt(median([r.wrk.lat_p50_ms for r in sat_base]), 2)} / "
        f"{fmt(median([r.wrk.lat_p99_ms for r in sat_base]), 2)} "
        f"| {fmt(median([r.wrk.lat_p50_ms for r in sat_traced]), 2)} / "
        f"{fmt(median([r.wrk.lat_p99_ms for r in sat_traced]), 2)} |",
        f"| CPU of processes outside the benchmark / steal (% of one CPU, per window) | "
        f"{', '.join(f'{fmt(r.other_cpu_pct)} / {fmt(r.steal_pct)}' for r in sat_base)} "
        f"| {', '.join(f'{fmt(r.other_cpu_pct)} / {fmt(r.steal_pct)}' for r in sat_traced)} |",
        f"| collector CPU (% of one CPU) | – | {fmt(sat_cpu)} % |",
        f"| OTLP receiver CPU (% of one CPU) | – | {fmt(sat_rcv)} % |",
        f"| spans exported per second | – | {fmt(sat_spans_rate)} |",
        f"| spans exported ÷ requests served | – | {fmt(sat_spans_ratio, 3)} |",
        f"| shed by the in-kernel rate limit (per window) | – | {', '.join(fmt(x) for x in sat_shed)} |",
        f"| events lost, all reasons (per window) | – | {', '.join(fmt(x) for x in sat_lost)} |",
    ]
    if tls is not None:
        lines += [
            f"| TLS uprobe hits per request served (per window) | – | {', '.join(tls_hits(r) for r in sat_traced)} |",
            f"| TLS libraries attached (per window) | – | {', '.join(tls_libs(r) for r in sat_traced)} |",
        ]
    hooks_tls = ""
    if tls is not None:
        hooks_tls = (
            f" In that run, TLS uprobe hits per request served: {tls_hits(hooks)}; TLS libraries attached: "
            f"{tls_libs(hooks)} (a uprobe on a shared library fires in every process that calls the function, "
            "nginx and wrk included, before any target check)."
        )
    lines += [
        "",
        f"Throughput ratio traced ÷ untraced: **{ratio:.2f}** (target ≥ {TARGET_THROUGHPUT_RATIO}: "
        f"{verdict(ratio >= TARGET_THROUGHPUT_RATIO)}).",
        "",
        f"With the probes attached but tracing another, idle process (every syscall of nginx and wrk still "
        f"runs the programs, which return at the target check): {fmt(hooks.wrk.rps)} req/s, "
        f"ratio {hooks.wrk.rps / b_rps:.2f}, the collector at {fmt(hooks_cpu)} % CPU, "
        f"{fmt(hooks.other_cpu_pct)} % CPU outside the benchmark. The remainder of the gap to the traced "
        "run is the work done for traced requests: parsing in the kernel, the collector and the receiver." + hooks_tls,
        "",
    ]
    b = base10
    lines += [
        f"### Fixed rate: `wrk -t1 -c{paced_conns}` with Lua `delay()` = {delay_ms} ms per connection, "
        f"{t.wrk.seconds:.0f} s",
        "",
    ]
    if rate_note:
        lines += [rate_note, ""]
    lines += [
        "| | " + " | ".join(c for c, _ in cols) + " |",
        "|---|" + "---:|" * len(cols),
        row("rate served (req/s)", fmt(b.wrk.rps), lambda r: fmt(r.wrk.rps)),
        row(
            "requests served: nginx (wrk)",
            f"{fmt(b.served)} ({fmt(b.wrk.requests)})",
            lambda r: f"{fmt(r.served)} ({fmt(r.wrk.requests)})",
        ),
        row(
            "latency p50 / p99 (ms)",
            f"{fmt(b.wrk.lat_p50_ms, 2)} / {fmt(b.wrk.lat_p99_ms, 2)}",
            lambda r: f"{fmt(r.wrk.lat_p50_ms, 2)} / {fmt(r.wrk.lat_p99_ms, 2)}",
        ),
        row(
            "CPU of processes outside the benchmark; steal (% of one CPU)",
            f"{fmt(b.other_cpu_pct)}; {fmt(b.steal_pct)}",
            lambda r: f"{fmt(r.other_cpu_pct)}; {fmt(r.steal_pct)}",
        ),
        row("requests seen by otelbpf", "–", lambda r: fmt(r.summary.get("requests seen", 0))),
        row("spans exported (counted by the receiver)", "–", lambda r: fmt(r.spans)),
        row("spans exported ÷ requests served", "–", lambda r: per(r.spans, r.served, 4)),
        row("**events lost**", "–", lambda r: f"**{fmt(r.lost)}**"),
    ]
    for k in t.reasons:
        lines.append(row(f"&nbsp;&nbsp;{k}", "–", lambda r, k=k: fmt(r.reasons.get(k, 0))))
    lines += [
        row(
            "**collector CPU per span** (µs), ready → exit incl. final flush",
            "–",
            lambda r: f"**{per(r.collector_cpu_total_us, r.spans)}**",
        ),
        row("collector CPU per span (µs), load window only", "–", lambda r: per(r.collector_cpu_window_us, r.spans)),
        row(
            "collector CPU (% of one CPU)",
            "–",
            lambda r: fmt(r.collector_cpu_window_us / 1e4 / r.wrk.seconds) + " %",
        ),
        row(
            "collector memory: RSS at the end of the window; peak (MiB)",
            "–",
            lambda r: f"{r.collector_rss_kib[0] / 1024:.0f}; {r.collector_rss_kib[1] / 1024:.0f}",
        ),
        row("OTLP receiver CPU per span (µs)", "–", lambda r: per(r.receiver_cpu_us, r.spans)),
        row(
            "BPF programs' run time per request (ns)",
            "–",
            lambda r: per(r.bpf_ns, r.served, 0) if r.bpf_runs else "not measured",
        ),
        row(
            "BPF program runs per request; ns per run",
            "–",
            lambda r: f"{per(r.bpf_runs, r.served)}; {per(r.bpf_ns, r.bpf_runs, 0)}" if r.bpf_runs else "–",
        ),
        row("BPF program runs skipped by the kernel (recursion misses)", "–", lambda r: fmt(r.recursion_misses)),
    ]
    if tls is not None:
        lines += [
            row("**TLS uprobe hits per request served** (otelbpf's summary)", "–", lambda r: f"**{tls_hits(r)}**"),
            row(
                "uprobe program runs per request (bpf_stats)",
                "–",
                lambda r: per(r.uprobe_runs, r.served, 2) if r.bpf_runs else "not measured",
            ),
            row("TLS libraries attached", "–", tls_libs),
        ]
    lines += [
        "",
        f"Targets (defaults): zero loss at {rate_name(rate)} req/s: {verdict(t.lost == 0 and t.spans == t.served)} "
        f"({fmt(t.lost)} lost, {fmt(spans_per_req, 4)} spans per request); "
        f"collector CPU ≤ {TARGET_US_PER_SPAN:g} µs/span: {verdict(us_per_span <= TARGET_US_PER_SPAN)} "
        f"({fmt(us_per_span, 1)} µs); throughput ratio ≥ {TARGET_THROUGHPUT_RATIO} at saturation: "
        f"{verdict(ratio >= TARGET_THROUGHPUT_RATIO)} ({ratio:.2f}).",
        "",
    ]
    if tcp_off10 is not None and t.bpf_runs and tcp_off10.bpf_runs and t.served and tcp_off10.served:
        o = tcp_off10
        bpf_cost = t.bpf_ns / t.served - o.bpf_ns / o.served
        cpu_cost = t.collector_cpu_total_us / t.spans - o.collector_cpu_total_us / o.spans if t.spans and o.spans else 0
        lines += [
            f"**What the TCP facts cost** (defaults minus `--no-tcp-facts`, the two windows back to back): "
            f"{bpf_cost:+,.0f} ns of BPF run time per request served, {cpu_cost:+,.1f} µs of collector CPU per "
            "span (ready → exit). The collector figure moves by a few µs between identical windows here; the BPF "
            "figure is steadier.",
            "",
        ]
    if t.bpf_by_prog:
        off_by = {name: ns for name, ns, _ in tcp_off10.bpf_by_prog} if tcp_off10 is not None else {}
        off_head = " | ns per request, --no-tcp-facts" if off_by else ""
        lines += [
            "BPF run time by program in the traced (defaults) fixed-rate window:",
            "",
            f"| program (attached {'tracepoint' if tls is None else 'tracepoint or uprobe'}) "
            f"| ns per request served | runs per request | ns per run{off_head} |",
            "|---|---:|---:|---:|" + ("---:|" if off_by else ""),
        ]
        for name, ns, cnt in t.bpf_by_prog[:8]:
            off_cell = f" | {per(off_by.get(name, 0), tcp_off10.served, 0)}" if off_by else ""  # type: ignore[union-attr]
            lines.append(
                f"| `{name}` | {per(ns, t.served, 0)} | {per(cnt, t.served, 2)} | {per(ns, cnt, 0)}{off_cell} |"
            )
        lines.append("")
    if profile:
        top, samples = profile
        gil_share = samples / (PROFILE_RATE_HZ * profile_seconds) * 100
        lines += [
            "### Where the collector's CPU goes",
            "",
            f"py-spy, in a separate traced run at the same rate: `py-spy record --gil --nonblocking --rate "
            f"{PROFILE_RATE_HZ}`, which samples only the thread holding the GIL, i.e. Python code running. "
            f"{samples} samples in {profile_seconds:.0f} s: Python ran {gil_share:.0f} % of the time; the rest of "
            "the collector's CPU is spent outside the GIL (system calls, gRPC's C core threads).",
            "",
            "| function (own time) | share of the Python samples |",
            "|---|---:|",
        ]
        lines += [f"| `{f}` | {share:.1f} % |" for f, share in top]
        lines.append("")
    lines += ["Notes:", ""]
    lines += [f"- {n}" for n in notes]
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sat-seconds", type=float, default=10.0, help="length of each saturation window")
    ap.add_argument("--sat-rounds", type=int, default=2, help="traced saturation windows (untraced: one more)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections at saturation")
    ap.add_argument("--rate-seconds", type=float, default=15.0, help="length of the fixed-rate windows")
    ap.add_argument("--delay-ms", type=int, default=10, help="pause of each connection after a response")
    ap.add_argument(
        "--rate",
        type=int,
        default=TARGET_RATE,
        help="fixed rate in req/s (lowered to half the untraced saturation throughput when that is below it)",
    )
    ap.add_argument(
        "--skip-nolimit", action="store_true", help="skip the fixed-rate run with the in-kernel rate limit off"
    )
    ap.add_argument(
        "--skip-tcp-off", action="store_true", help="skip the fixed-rate run with --no-tcp-facts (the TCP facts' cost)"
    )
    ap.add_argument("--profile", action="store_true", help="add a py-spy profile of the collector at the fixed rate")
    ap.add_argument("--tls", action="store_true", help="nginx over HTTPS (TLS 1.2/1.3, self-signed certificate)")
    ap.add_argument("--no-doc", action="store_true", help=f"do not append to {DOC.relative_to(ROOT)}")
    ap.add_argument("otelbpf_args", nargs="*", help="extra arguments for `otelbpf run` (after --)")
    args = ap.parse_args()
    sat_conns = args.connections

    if os.geteuid() != 0:
        print("bench/nginx_http.py needs root (eBPF)", file=sys.stderr)
        return 2
    for tool in ("nginx", "wrk", "bpftool", "sysctl", *(("openssl",) if args.tls else ())):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (make setup installs it)", file=sys.stderr)
            return 2
    if args.profile and not (VENV_BIN / "py-spy").exists():
        print("--profile needs py-spy: .venv/bin/pip install py-spy", file=sys.stderr)
        return 2

    cmd = "sudo .venv/bin/python bench/nginx_http.py" + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")
    env = machine()
    notes: list[str] = []
    t_start = time.monotonic()
    foreign = [p for p in bpf_progs() if p.get("type") == "tracepoint"]
    foreign_uprobes = [p for p in bpf_progs() if p.get("type") == "kprobe"] if args.tls else []
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    if foreign:
        notes.append(
            f"{len(foreign)} other tracepoint BPF programs were loaded when the run started (other tools); "
            "they run on every traced syscall, untraced windows included."
        )
    if foreign_uprobes:
        notes.append(
            f"{len(foreign_uprobes)} other uprobe (kprobe-type) BPF programs were loaded when the run started "
            "(other tools); if they sit in libssl they run in untraced windows too."
        )
    notes.append(f"1-minute load average at the start: {load}.")

    procs = Procs()
    tmp = Path(tempfile.mkdtemp(prefix="otelbpf-bench-"))
    # SIGTERM/SIGHUP -> KeyboardInterrupt-like exit so `finally` cleans up.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))
    try:
        nginx = Nginx(procs, tmp, tls=args.tls)
        counter = SpanCounter(procs)
        bench = Bench(procs, nginx, counter, tmp, args.otelbpf_args)
        log(f"nginx master {nginx.master_pid} on {nginx.url}; receiver {counter.endpoint}")

        tls = None
        if args.tls:
            warm = run_wrk(nginx.tls_check_url, sat_conns, 2)  # warm-up, logging what TLS wrk negotiates
            tls = TlsSetup(openssl_version(), nginx.negotiated())
            log(
                f"warm-up over https: {warm.rps:,.0f} req/s, non-2xx {warm.non2xx}, errors {warm.errors}; "
                + tls.negotiated_text()
            )
            if warm.non2xx or not warm.requests:
                raise RuntimeError(f"wrk got no good answers over https: {warm}")
        else:
            run_wrk(nginx.url, sat_conns, 2)  # warm-up
        sat_base: list[Run] = []
        sat_traced: list[Run] = []
        for i in range(args.sat_rounds):
            sat_base.append(bench.untraced(f"saturation untraced #{i + 1}", sat_conns, args.sat_seconds))
            sat_traced.append(bench.traced(f"saturation traced #{i + 1}", sat_conns, args.sat_seconds))
        sat_base.append(bench.untraced(f"saturation untraced #{args.sat_rounds + 1}", sat_conns, args.sat_seconds))
        hooks = bench.hooks_only("saturation, probes attached to another process", sat_conns, args.sat_seconds)

        script = tmp / "paced.lua"
        script.write_text(PACED_LUA.format(delay_ms=args.delay_ms))
        rate, rate_note = args.rate, None
        sat_rps = median([r.wrk.rps for r in sat_base])
        if sat_rps < rate:
            rate = half_of(sat_rps)
            rate_note = (
                f"Untraced saturation ({fmt(sat_rps)} req/s, median) is below {fmt(args.rate)} req/s, so the fixed "
                f"rate is half of it: {fmt(rate)} req/s."
            )
        conns, cal = calibrate(bench, script, args.delay_ms, 3.0, rate)
        if cal.rps < 0.9 * rate and half_of(sat_rps) < rate:
            log(f"calibration reached only {cal.rps:,.0f} of {rate:,} req/s untraced; using half of saturation")
            rate_note = (
                f"Paced untraced load reached only {fmt(cal.rps)} of {fmt(rate)} req/s, so the fixed rate is half "
                f"the untraced saturation throughput ({fmt(sat_rps)} req/s, median): {fmt(half_of(sat_rps))} req/s."
            )
            rate = half_of(sat_rps)
            conns, cal = calibrate(bench, script, args.delay_ms, 3.0, rate)
        if rate_note:
            log(rate_note)
        at = rate_name(rate)
        base10 = bench.untraced(f"{at} untraced", conns, args.rate_seconds, script)
        with bpf_stats_enabled():
            traced10 = bench.traced(f"{at} traced", conns, args.rate_seconds, script, bpf_stats=True)
        tcp_off10 = None
        if not args.skip_tcp_off:
            with bpf_stats_enabled():
                tcp_off10 = bench.traced(
                    f"{at} traced, --no-tcp-facts",
                    conns,
                    args.rate_seconds,
                    script,
                    bpf_stats=True,
                    extra_args=["--no-tcp-facts"],
                )
        nolimit10 = None
        if not args.skip_nolimit:
            nolimit10 = bench.traced(
                f"{at} traced, no rate limit",
                conns,
                args.rate_seconds,
                script,
                extra_args=["--max-spans-per-second", "0"],
            )
        profile = None
        if args.profile:
            raw = tmp / "collector.pyspy.txt"
            prof_run = bench.traced(f"{at} traced + py-spy", conns, args.rate_seconds, script, profile=raw)
            if raw.exists():
                profile = profile_top(raw)
                keep = Path(tempfile.gettempdir()) / "otelbpf-bench-collector.pyspy.txt"
                shutil.copy(raw, keep)
                log(f"py-spy raw profile (collapsed stacks) kept in {keep}")
                for fn, share in profile[0]:
                    log(f"  {share:5.1f}%  {fn}")
            notes.append(f"The py-spy run served {prof_run.wrk.rps:,.0f} req/s; its numbers are not used above.")
    finally:
        procs.kill_all()
        shutil.rmtree(tmp, ignore_errors=True)

    startup = median([r.otelbpf_startup_s for r in [*sat_traced, traced10]])
    windows = [*sat_base, *sat_traced, hooks, base10, traced10, *(r for r in (tcp_off10, nolimit10) if r)]
    disturbed = [r for r in windows if r.foreign_progs]
    if disturbed:
        notes.append(
            "Other tools' tracepoint or uprobe BPF programs were loaded at the end of "
            f"{len(disturbed)} of {len(windows)} windows ("
            + ", ".join(f"{r.label}: {r.foreign_progs}" for r in disturbed)
            + "); they run on nginx's and wrk's calls in untraced windows too."
        )
    notes += [
        "Requests served are nginx's own count (stub_status, read before the tracer starts and after it exits, "
        "minus the status request); wrk's count omits requests in flight when it stops.",
        "Collector CPU is utime+stime of the `otelbpf run` process (all threads) from /proc/<pid>/stat during "
        "the load window, and from its rusage at exit for the ready → exit figure; probe compilation and "
        f"attachment before `ready` (median {startup:.1f} s) is excluded.",
        "The OTLP receiver (bench/span_counter.py, Python gRPC, counting only) runs on the same 2 CPUs; its CPU "
        "is taken from nginx, wrk and the collector and lowers the traced throughput. A collector on another "
        "machine would not cost this.",
        "BPF run time comes from kernel.bpf_stats_enabled=1 during the traced fixed-rate windows with the "
        "defaults and with --no-tcp-facts (restored after), summed over the tracepoint "
        + ("and uprobe " if args.tls else "")
        + "programs otelbpf loaded; it counts every run, including syscalls "
        "of wrk and other processes that the programs filter out early. Enabling the statistics itself adds a "
        "little to each run.",
        "otelbpf ran with its defaults (--sched-idle, --max-spans-per-second 20000, --min-spans-per-second 1000, "
        "adaptive)"
        + (f" plus {' '.join(args.otelbpf_args)}." if args.otelbpf_args else "."),
        f"The in-kernel rate limit ({DEFAULT_MAX_SPANS:,} requests/s by default) counts per 100 ms window across "
        "all CPUs. While the machine's CPUs, or a traced process's own CPUs, are at least 80 % busy, or the "
        "machine is at least 60 % busy and the collector uses more than 15 % of a CPU, the collector's load "
        "governor divides it by four each second, down to --min-spans-per-second (1,000 by default). It doubles "
        "it again each second once both CPU measures are below 65 %. The collector runs under SCHED_IDLE. "
        "What is shed is counted as lost.",
        "CPU of processes outside the benchmark = the machine's user+nice+system time minus that of nginx, wrk, "
        "the collector and the receiver (interrupt and softirq time left out on both sides); high values mark "
        "windows disturbed by other work on the machine.",
    ]
    if args.tls:
        notes += [
            f"TLS uprobe hits per request = the line `{TLS_HITS_LINE}: N` of otelbpf's exit summary ÷ the requests "
            "nginx served in that window; n/a where the summary had no such line. The probes sit in libssl.so.3, "
            "which wrk links too, so wrk's own SSL_read/SSL_write calls count wherever the probes are attached to "
            "every process; the bpf_stats row counts the runs of otelbpf's uprobe programs the same way.",
            "The BPF run time of a uprobe program is only the time inside the program: the breakpoint trap and the "
            "single-step around it that every uprobe hit costs are not in it; they show in the throughput.",
            f"Every wrk window opens its connections afresh ({sat_conns} at saturation, {conns} at the fixed rate), "
            "each with a full TLS handshake; keep-alive spreads that over the window.",
            "The benchmark's own requests (readiness, stub_status) go over https without certificate checks; wrk "
            "does not check certificates either.",
        ]
    notes.append(f"Whole benchmark: {time.monotonic() - t_start:.0f} s.")
    text = report(
        cmd,
        env,
        notes,
        sat_base,
        sat_traced,
        hooks,
        sat_conns,
        nginx.body_bytes,
        conns,
        args.delay_ms,
        base10,
        traced10,
        nolimit10,
        tcp_off10,
        profile,
        args.rate_seconds,
        rate,
        rate_note,
        tls,
    )
    print(text)
    if not args.no_doc:
        DOC.parent.mkdir(exist_ok=True)
        if not DOC.exists():
            DOC.write_text(
                "# Benchmarks\n\nResults of `make bench` (bench/nginx_http.py), newest last. Each section is one "
                "run, numbers as measured on the machine it names.\n\n"
            )
        with DOC.open("a") as f:
            f.write(text + "\n")
        log(f"appended to {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
