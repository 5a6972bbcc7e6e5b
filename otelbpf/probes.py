"""Compile, load and attach the kernel programs; the only module that imports bcc.

Everything else sees plain Python: a ring-buffer file descriptor, counters as a dict, and methods
to choose which processes are traced. bcc objects never leave this module.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import resource
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from otelbpf import events
from otelbpf.events import STAT_NAMES

logger = logging.getLogger(__name__)

# Debian's python3-bpfcc installs here; it is pure Python over libbcc.so and imports into any
# CPython 3, so a virtualenv can use it without pulling in the rest of dist-packages.
_SYSTEM_BCC = Path("/usr/lib/python3/dist-packages/bcc")


# Joined in this order and compiled as one object, because they share the connection table: the
# shared maps and helpers, each protocol's detector and state machine, then the hook families (TLS
# plaintext runs through the socket side's dispatcher, and a socket's close ends its TLS session).
BPF_SOURCES = (
    "include/otelbpf/conn.bpf.h",
    "include/otelbpf/http1.bpf.h",
    "include/otelbpf/postgres.bpf.h",
    "include/otelbpf/redis.bpf.h",
    "include/otelbpf/mysql.bpf.h",
    "tcp.bpf.c",
    "sockets.bpf.c",
    "tls.bpf.c",
)
# Where enum tail_call, the tail-call table's one declaration, lives.
TAIL_CALL_SOURCE = "include/otelbpf/conn.bpf.h"

# Every tracepoint bpf/sockets.bpf.c attaches to, checked before compiling so a kernel that lacks
# one gets a clear message rather than a bcc traceback.
_IO_SYSCALLS = (
    "read",
    "readv",
    "recvfrom",
    "recvmsg",
    "write",
    "writev",
    "sendto",
    "sendmsg",
    "connect",
    "sendfile64",
)
TRACEPOINTS: list[str] = [
    *(f"syscalls:sys_{edge}_{name}" for name in _IO_SYSCALLS for edge in ("enter", "exit")),
    "syscalls:sys_exit_accept",
    "syscalls:sys_exit_accept4",
    "syscalls:sys_enter_close",
    "sock:sock_recv_length",
    "sock:sock_send_length",
    "sched:sched_process_exec",
    "sched:sched_process_fork",
    "sched:sched_process_exit",
    "task:task_newtask",
    "syscalls:sys_enter_mmap",
    "syscalls:sys_exit_mmap",
]
# bpf/tcp.bpf.c's, attached unless TCP facts are off (--no-tcp-facts).
TCP_TRACEPOINTS: list[str] = [
    "sock:inet_sock_set_state",
    "tcp:tcp_receive_reset",
    "tcp:tcp_send_reset",
    "tcp:tcp_destroy_sock",
]

# config.tls_follow (enum tls_follow in conn.bpf.h): which process events the kernel sends on task_events.
FOLLOW_NONE = 0  # no TLS probes
FOLLOW_EXECS = 1  # tracing everything: libraries are hooked file-wide; new programs need checking
FOLLOW_ALL = 2  # tracing chosen processes: forks, execs, executable mappings and ends of traced processes


@dataclass(frozen=True)
class TlsHook:
    """One TLS library function: its entry handler in bpf/tls.bpf.c; every hook returns via tls_return."""

    symbol: str
    entry: str
    required: bool


# Library kind (otelbpf.tls_libraries) -> the functions hooked in it. Optional ones are absent from
# older libraries (OpenSSL 1.1.0 has no _ex forms).
TLS_HOOKS: dict[str, tuple[TlsHook, ...]] = {
    "openssl": (
        TlsHook("SSL_read", "ssl_read_enter", True),
        TlsHook("SSL_write", "ssl_write_enter", True),
        TlsHook("SSL_read_ex", "ssl_read_ex_enter", False),
        TlsHook("SSL_write_ex", "ssl_write_ex_enter", False),
    ),
    "gnutls": (
        TlsHook("gnutls_record_recv", "gnutls_recv_enter", True),
        TlsHook("gnutls_record_send", "gnutls_send_enter", True),
    ),
}
TLS_RETURN = "tls_return"
# The uprobe programs attached to TLS libraries.
TLS_ENTRY_PROGRAMS = frozenset({TLS_RETURN, *(hook.entry for hooks in TLS_HOOKS.values() for hook in hooks)})
# Threads that load programs at start: the verifier's time is most of a start, and it runs in the loader's thread.
LOAD_THREADS = 4
# Threads that release probes at exit: each release mostly waits for the kernel, not for a CPU.
DETACH_THREADS = 16


class ProbeError(RuntimeError):
    """The kernel programs could not be compiled, loaded or attached."""


def bpf_source_dir() -> Path:
    """Where the ``.bpf.c`` files live (``OTELBPF_BPF_DIR`` overrides)."""
    env = os.environ.get("OTELBPF_BPF_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "bpf"


def import_bcc() -> Any:
    """Import bcc, falling back to the distribution's copy outside the active environment."""
    try:
        import bcc  # type: ignore[import-not-found]

        return bcc
    except ImportError:
        pass
    init = _SYSTEM_BCC / "__init__.py"
    if not init.exists():
        raise ProbeError("bcc is not installed: install the distribution's python3-bpfcc (make setup)")
    spec = importlib.util.spec_from_file_location("bcc", init, submodule_search_locations=[str(_SYSTEM_BCC)])
    if spec is None or spec.loader is None:
        raise ProbeError(f"cannot load bcc from {_SYSTEM_BCC}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bcc"] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # libbcc.so missing or incompatible
        del sys.modules["bcc"]
        raise ProbeError(f"bcc failed to import: {exc}") from exc
    return module


@dataclass(frozen=True)
class ProbeSettings:
    """Kernel-side tunables, passed to the compiler as -D flags."""

    capture_bytes: int = 512
    resp_capture_bytes: int = 256
    max_connections: int = 65536
    ringbuf_pages: int = 1024
    wakeup_every: int = 64  # records per CPU between consumer wakeups
    task_ringbuf_pages: int = 64  # process events (task_events): 32 bytes each, a few thousand of them
    tcp_facts: bool = True  # TCP facts on requests and failed connects as records (bpf/tcp.bpf.c)

    def cflags(self) -> list[str]:
        """The -D flags for these settings."""
        # Up to 32 KiB: record lengths travel as 16-bit counts.
        if not 64 <= self.capture_bytes <= 32768 or self.capture_bytes & (self.capture_bytes - 1):
            raise ValueError(f"capture bytes must be a power of two from 64 to 32768, got {self.capture_bytes}")
        if not 16 <= self.resp_capture_bytes <= 32768 or self.resp_capture_bytes & (self.resp_capture_bytes - 1):
            raise ValueError(
                f"response capture bytes must be a power of two from 16 to 32768, got {self.resp_capture_bytes}"
            )
        for pages in (self.ringbuf_pages, self.task_ringbuf_pages):
            if pages < 1 or pages & (pages - 1):
                raise ValueError(f"ring buffer pages must be a power of two, got {pages}")
        return [
            f"-DOTELBPF_CAPTURE_BYTES={self.capture_bytes}",
            f"-DOTELBPF_RESP_CAPTURE_BYTES={self.resp_capture_bytes}",
            f"-DMAX_CONNECTIONS={self.max_connections}",
            f"-DRINGBUF_PAGES={self.ringbuf_pages}",
            f"-DWAKEUP_EVERY={self.wakeup_every}",
            f"-DTASK_RINGBUF_PAGES={self.task_ringbuf_pages}",
            f"-DTCP_FACTS={int(self.tcp_facts)}",
        ]


def program_text(source_dir: Path | None = None) -> str:
    """The hook families joined into the one program bcc compiles, with #line markers for errors.

    Joined as text, not #included: bcc rewrites TRACEPOINT_PROBE only in the main file.
    """
    source_dir = source_dir or bpf_source_dir()
    parts = []
    for name in BPF_SOURCES:
        path = source_dir / name
        if not path.exists():
            raise ProbeError(f"BPF source not found: {path}")
        parts.append(f'#line 1 "{path}"\n{path.read_text()}')
    return "\n".join(parts)


def tail_call_slots(source_dir: Path | None = None) -> list[tuple[int, str]]:
    """(slot, program name) for each program of the tail-call table, read from its one declaration."""
    text = ((source_dir or bpf_source_dir()) / TAIL_CALL_SOURCE).read_text()
    body = re.search(r"enum tail_call\s*\{(.*?)\};", re.sub(r"/\*.*?\*/", "", text, flags=re.S), re.S)
    if body is None:
        raise ProbeError(f"enum tail_call not found in {TAIL_CALL_SOURCE}")
    constants = {name: value for name, value in vars(events).items() if isinstance(value, int)}
    slots = []
    for name, expr in re.findall(r"\b(TAIL_\w+)\s*=\s*([^,]+),", body.group(1)):
        # Slots are numbers or sums of the contract's constants: OTELBPF_PROTO_X maps to events.PROTO_X.
        terms = [t.strip() for t in expr.split("+")]
        slot = sum(int(t) if t.isdigit() else constants[t.removeprefix("OTELBPF_")] for t in terms)
        if name != "TAIL_MAX":
            slots.append((slot, name.removeprefix("TAIL_").lower()))
    return slots


def render_cflags(settings: ProbeSettings, offsets: dict[str, int]) -> list[str]:
    """All compiler flags: include path, tunables and kernel struct offsets."""
    flags = [f"-I{bpf_source_dir() / 'include'}", *settings.cflags()]
    flags += [f"-D{name}={value}" for name, value in sorted(offsets.items())]
    # The distribution's headers may be older than the kernel; silence their noise, not ours.
    flags += ["-Wno-macro-redefined", "-Wno-unknown-warning-option"]
    return flags


# Shared objects that only compile the programs: bcc's LLVM and clang, idle once they are loaded.
_COMPILER_LIBRARIES = re.compile(r"/lib(LLVM|clang)[^/]*\.so[^/]*$")
_MADV_DONTNEED = 4


def release_compiler_memory(maps_path: str = "/proc/self/maps") -> int:
    """Give back what compiling the programs left resident: freed heap, and the compiler's code pages;
    return the bytes of code pages dropped.

    The code (r-xp) of libLLVM and libclang is clean file-backed memory, read in by the compile and not
    needed again: dropped, it is simply read from the file again if it ever runs. Read-only data is
    left alone, since relocated pages there (RELRO) were written before being made read-only.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.malloc_trim(0)  # LLVM frees its heap at the end of the compile; glibc keeps it otherwise
    libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    dropped = 0
    try:
        with open(maps_path) as maps:
            lines = maps.readlines()
    except OSError:
        return 0
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[1] != "r-xp" or not _COMPILER_LIBRARIES.search(fields[5]):
            continue
        start, end = (int(x, 16) for x in fields[0].split("-"))
        if libc.madvise(start, end - start, _MADV_DONTNEED) == 0:
            dropped += end - start
        else:
            logger.debug("madvise on %s: errno %d", fields[5], ctypes.get_errno())
    return dropped


def _raise_fd_limit() -> None:
    """Lift the soft open-file limit to the hard one: every uprobe is a perf-event file descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logger.debug("could not raise the open-file limit from %d: %s", soft, exc)


def load_in_parallel(bpf: Any, loads: list[tuple[bytes, int]]) -> list[int]:
    """Load programs (name, type) of a compiled object on a few threads; their file descriptors, in order.

    Most of a start is the verifier checking the tail-called programs one after another, each in the
    calling thread. libbcc's calls drop the GIL and loads of different programs share nothing, so the
    CPUs verify side by side: about half the load time on two."""
    workers = min(LOAD_THREADS, len(loads))
    if workers <= 1:
        return [bpf.load_func(name, kind).fd for name, kind in loads]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="otelbpf-load") as pool:
        return [fn.fd for fn in pool.map(lambda load: bpf.load_func(*load), loads)]


def detach_in_parallel(bpf: Any) -> None:
    """Detach a compiled object's tracepoints and uprobes on a few threads (bcc's cleanup goes one by one)."""
    detaches = [(bpf.detach_tracepoint, tp) for tp in list(bpf.tracepoint_fds)]
    detaches += [(bpf.detach_uprobe_event, ev) for ev in list(bpf.uprobe_fds)]
    if not detaches:
        return

    def detach(job: tuple[Callable[[bytes], None], bytes]) -> None:
        try:
            job[0](job[1])
        except Exception as exc:  # cleanup() tries again; one stuck probe must not keep the rest attached
            logger.debug("detaching %s: %s", job[1], exc)

    with ThreadPoolExecutor(max_workers=DETACH_THREADS, thread_name_prefix="otelbpf-detach") as pool:
        list(pool.map(detach, detaches))


class KernelProbes:
    """The kernel programs (bpf/*.bpf.c): tracepoints attach on construction, TLS uprobes on demand."""

    def __init__(self, settings: ProbeSettings, offsets: dict[str, int]) -> None:
        _raise_fd_limit()
        # bcc refuses more than 1000 probes in a process by default; otelbpf bounds its own
        # per-process TLS probes (--tls-max-process-probes), so bcc's global quota must not.
        os.environ.setdefault("BCC_PROBE_LIMIT", "1000000")
        bcc = import_bcc()
        self.settings = settings
        text = program_text()
        try:
            # TRACEPOINT_PROBE functions attach as the object loads. Nothing is traced until
            # configure() runs, because the default config traces no process.
            self._bpf = bcc.BPF(text=text.encode(), cflags=render_cflags(settings, offsets))
            if settings.tcp_facts:
                self._bpf.attach_tracepoint(tp=b"tcp:tcp_send_reset", fn_name=b"tcp_send_reset_seen")
        except Exception as exc:
            raise ProbeError(f"failed to compile or attach the BPF programs ({', '.join(BPF_SOURCES)}): {exc}") from exc
        try:
            # The sys_exit programs tail-call this one; until it is in place they drop nothing
            # traced, because no process is traced before configure().
            # A tail call reaches only programs of its own type: the syscall hooks' table holds
            # tracepoint programs, the uprobes' table their kprobe-type copies (tls_<name>).
            progs, tls_progs = self._bpf["progs"], self._bpf["tls_progs"]
            slots = tail_call_slots()
            loads = [(name.encode(), bcc.BPF.TRACEPOINT) for _, name in slots]
            loads += [(f"tls_{name}".encode(), bcc.BPF.KPROBE) for _, name in slots]
            # The TLS entry programs are loaded now rather than at the first attach, which must be quick:
            # a program that has just started is hooked while it runs (otelbpf.tls_follow).
            loads += [(name.encode(), bcc.BPF.KPROBE) for name in sorted(TLS_ENTRY_PROGRAMS)]
            fds = load_in_parallel(self._bpf, loads)
            for i, (slot, _) in enumerate(slots):
                progs[progs.Key(slot)] = progs.Leaf(fds[i])
                tls_progs[tls_progs.Key(slot)] = tls_progs.Leaf(fds[len(slots) + i])
        except Exception as exc:
            raise ProbeError(f"failed to load the tail-called programs: {exc}") from exc
        self._events = self._bpf["events"]
        self._stats = self._bpf["stats"]
        self._targets = self._bpf["targets"]
        self._comms = self._bpf["target_comms"]
        self._config = self._bpf["config_map"]
        self._task_events = self._bpf["task_events"]
        self._hooked = self._bpf["hooked_tgids"]
        self._self_tgid = 0
        self._trace_all = False
        self._tls_follow = FOLLOW_NONE
        # bcc's names of the uprobe events attached per (library path, pid): what detach_tls takes
        # down. Kept from the attach, because bcc cannot work them out again once the pid is gone.
        self._tls_events: dict[tuple[str, int], list[bytes]] = {}

    @property
    def ring_fd(self) -> int:
        """File descriptor of the ring buffer carrying finished requests."""
        return int(self._events.map_fd)

    @property
    def ring_size(self) -> int:
        """Data size of the ring buffer in bytes."""
        import mmap

        return self.settings.ringbuf_pages * mmap.PAGESIZE

    @property
    def task_ring_fd(self) -> int:
        """File descriptor of the ring buffer carrying process events (struct otelbpf_task_event)."""
        return int(self._task_events.map_fd)

    @property
    def task_ring_size(self) -> int:
        """Data size of the process-event ring buffer in bytes."""
        import mmap

        return self.settings.task_ringbuf_pages * mmap.PAGESIZE

    def configure(
        self, self_tgid: int, trace_all: bool, max_per_second: int = 0, tls_follow: int = FOLLOW_NONE
    ) -> None:
        """Set who is never traced (otelbpf itself), whether every process is, the rate limit, and which
        process events to send (FOLLOW_*)."""
        self._self_tgid = self_tgid
        self._trace_all = trace_all
        self._tls_follow = tls_follow
        self.set_rate_limit(max_per_second)

    def set_rate_limit(self, max_per_second: int) -> None:
        """Requests traced per second at most (0: no limit); the kernel sheds and counts the rest."""
        leaf = self._config.Leaf()
        leaf.self_tgid = self._self_tgid
        leaf.trace_all = 1 if self._trace_all else 0
        # The kernel counts per 100 ms window, shared by all CPUs.
        leaf.max_per_window = 0 if max_per_second <= 0 else max(1, -(-max_per_second // 10))
        leaf.tls_follow = self._tls_follow
        self._config[self._config.Key(0)] = leaf

    def add_targets(self, pids: set[int] | list[int]) -> None:
        """Trace these processes (children forked later are added in the kernel)."""
        for pid in pids:
            self._targets[self._targets.Key(pid)] = self._targets.Leaf(1)

    def add_target_comms(self, names: list[str]) -> None:
        """Trace processes that exec a program with one of these names from now on."""
        for name in names:
            key = self._comms.Key()
            # The kernel keeps 15 characters of a program's name as its comm.
            key.comm = name.encode()[:15]
            self._comms[key] = self._comms.Leaf(1)

    def attach_tls(
        self, path: str, kind: str, symbols: Iterable[str], pid: int = -1, addresses: Iterable[int] = ()
    ) -> int:
        """Hook one TLS library file, for every process that maps it or (pid) for one process only;
        return the probes attached.

        addresses: each symbol's st_value, in the order of symbols. Given, bcc skips its own symbol
        lookup, which costs up to 25 ms a probe in a binary as large as node: more than a new
        process's head start.
        """
        hooks = TLS_HOOKS.get(kind)
        if hooks is None:
            raise ProbeError(f"unknown TLS library kind {kind!r}")
        symbols = tuple(symbols)
        where = dict(zip(symbols, addresses, strict=False))
        present = set(symbols)
        missing = [h.symbol for h in hooks if h.required and h.symbol not in present]
        if missing:
            raise ProbeError(f"{path} does not export {', '.join(missing)}")
        key = (path, pid)
        if key in self._tls_events:
            raise ProbeError(f"TLS probes already attached to {path}" + (f" for pid {pid}" if pid >= 0 else ""))
        fds = self._bpf.uprobe_fds
        before = set(fds)
        try:
            for hook in hooks:
                if hook.symbol not in present:
                    continue
                # Either the symbol or its address, never both (bcc's rule).
                at = {"addr": where[hook.symbol]} if hook.symbol in where else {"sym": hook.symbol.encode()}
                self._bpf.attach_uprobe(name=path.encode(), fn_name=hook.entry.encode(), pid=pid, **at)
                self._bpf.attach_uretprobe(name=path.encode(), fn_name=TLS_RETURN.encode(), pid=pid, **at)
        except Exception as exc:
            # Half a library hooked would see reads without writes: take back what was attached.
            for ev_name in set(fds) - before:
                try:
                    self._bpf.detach_uprobe_event(ev_name)
                except Exception:  # noqa: BLE001 - best effort on a path already failing
                    pass
            raise ProbeError(f"failed to attach TLS probes to {path}: {exc}") from exc
        attached = [name for name in fds if name not in before]
        self._tls_events[key] = attached
        return len(attached)

    def detach_tls(self, path: str, pid: int) -> int:
        """Take down the probes attach_tls put on path for pid; return how many. Slow: each takes the
        kernel about 100 ms here (an RCU grace period), during which other attaches wait."""
        names = self._tls_events.pop((path, pid), [])
        for ev_name in names:
            try:
                self._bpf.detach_uprobe_event(ev_name)
            except Exception as exc:  # noqa: BLE001 - already gone; nothing else to undo
                logger.debug("detaching %s: %s", ev_name, exc)
        return len(names)

    def report_exit(self, pid: int, wanted: bool = True) -> None:
        """Have the kernel report pid's end on task_events (it has per-process TLS probes), or not."""
        key = self._hooked.Key(pid)
        if wanted:
            self._hooked[key] = self._hooked.Leaf(1)
        else:
            try:
                del self._hooked[key]
            except KeyError:
                pass

    def target_pids(self) -> list[int]:
        """Processes in the kernel's target table (those selected, their children and exec'd matches)."""
        return [int(k.value) for k in self._targets.keys()]

    def read_stats(self) -> dict[str, int]:
        """Kernel counters summed over CPUs, by name."""
        out: dict[str, int] = {}
        for idx, name in STAT_NAMES.items():
            values = self._stats[self._stats.Key(idx)]
            out[name] = int(sum(values))
        return out

    def in_flight_requests(self) -> int:
        """Requests the connection table holds in flight now (read once, at exit: it walks the table)."""
        # enum conn_state_kind: ST_REQUEST = 1, ST_RESPONSE = 2.
        return sum(1 for _, st in self._bpf["conns"].items() if st.state in (1, 2))

    def close(self) -> None:
        """Detach and unload everything."""
        bpf, self._bpf = getattr(self, "_bpf", None), None
        if bpf is not None:
            # Slow: the kernel waits for a grace period for each probe it releases (~75-100 ms here), under
            # one lock, but part of each release runs outside it: from several threads the waits overlap,
            # about 40 % less in all. Handing the descriptors to a child that exits in the background would
            # only move the wait to the next otelbpf started: each release holds up every attach meanwhile.
            detach_in_parallel(bpf)
            bpf.cleanup()  # the rest, and anything a thread failed to release
