"""``otelbpf check``: what this kernel, this machine and the chosen targets support, one line per feature.

The first thing to run when something is missing. Each finding says whether the feature is there, what was
seen, and what depends on it. Features otelbpf cannot run without are "basic": when one is missing, the
command exits non-zero. Nothing here loads a program into the kernel except a ring buffer map, created and
closed at once, which is the only way to learn whether the kernel has them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import shutil
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from otelbpf import preflight
from otelbpf.btf import DEFAULT_VMLINUX_BTF, Btf, BtfError
from otelbpf.elf import ElfError, stapsdt_probes

OK = "ok"
MISSING = "missing"
UNKNOWN = "unknown"

# bpf(2): command and map type numbers from linux/bpf.h, stable ABI.
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_BPF_MAP_CREATE = 0
_BPF_MAP_TYPE_RINGBUF = 27
_RINGBUF_BYTES = 4096

# The probes the Python function spans use (CPython's Include/pydtrace.d).
PYTHON_FUNCTION_PROBES = ("function__entry", "function__return")
DISTRIBUTION_PYTHON = "/usr/bin/python3"


@dataclass(frozen=True)
class Finding:
    """One feature: its state (OK, MISSING or UNKNOWN), what was seen, and whether otelbpf needs it to run."""

    feature: str
    state: str
    detail: str
    basic: bool = False

    def line(self, width: int = 24) -> str:
        """The finding as one line of the report."""
        return f"{self.state:<8} {self.feature:<{width}} {self.detail}"


def privileges(status: Path = Path("/proc/self/status")) -> Finding:
    """Root, and root's capabilities to load eBPF programs (a container may drop them)."""
    try:
        preflight.check_root(status)
    except preflight.PreflightError as exc:
        return Finding("privileges", MISSING, str(exc), basic=True)
    caps = preflight.effective_capabilities(status)
    held = [
        name
        for name, bit in (
            ("CAP_SYS_ADMIN", preflight.CAP_SYS_ADMIN),
            ("CAP_BPF", preflight.CAP_BPF),
            ("CAP_PERFMON", preflight.CAP_PERFMON),
        )
        if caps is not None and caps >> bit & 1
    ]
    return Finding("privileges", OK, f"root with {', '.join(held) or 'capabilities not readable'}", basic=True)


def bcc() -> Finding:
    """The compiler and loader otelbpf runs its kernel programs with."""
    from otelbpf.probes import ProbeError, import_bcc  # imports bcc, which is slow: only when asked

    try:
        module = import_bcc()
    except ProbeError as exc:
        return Finding("bcc", MISSING, str(exc), basic=True)
    version = getattr(module, "__version__", "version unknown")
    return Finding("bcc", OK, f"bcc {version} ({Path(module.__file__).parent})", basic=True)


def kernel_headers(modules: Path = Path("/lib/modules"), release: str | None = None) -> Finding:
    """The headers bcc compiles against."""
    release = release or os.uname().release
    try:
        preflight.check_kernel_headers(modules, release)
    except preflight.PreflightError as exc:
        return Finding("kernel headers", MISSING, str(exc), basic=True)
    build = modules / release / "build"
    target = os.path.realpath(build)
    shown = str(build) if target == str(build) else f"{build} -> {target}"
    return Finding("kernel headers", OK, shown, basic=True)


def btf(path: str = DEFAULT_VMLINUX_BTF) -> Finding:
    """Kernel BTF, and every struct offset the programs read from it."""
    from otelbpf import kernel_offsets

    try:
        preflight.check_btf(path)
        offsets = kernel_offsets.all_offsets(Btf.load(path))
    except preflight.PreflightError as exc:
        return Finding("BTF", MISSING, str(exc), basic=True)
    except (BtfError, OSError) as exc:
        return Finding("BTF", MISSING, f"{path}: {exc}", basic=True)
    return Finding("BTF", OK, f"{path}: all {len(offsets)} struct offsets found", basic=True)


def tracepoints(names: Sequence[str], optional: Sequence[str] = (), root: Path | None = None) -> Finding:
    """tracefs, and every tracepoint the programs attach to; optional ones only take a feature away."""
    try:
        root = root or preflight.tracefs_root()
    except preflight.PreflightError as exc:
        return Finding("tracepoints", MISSING, str(exc), basic=True)
    # The same test `otelbpf run` makes before it attaches anything, so the two never disagree.
    try:
        preflight.check_tracepoints(list(names), root)
    except preflight.PreflightError as exc:
        return Finding("tracepoints", MISSING, str(exc), basic=True)
    detail = f"all {len(names)} needed, under {root}"
    try:
        preflight.check_tracepoints(list(optional), root)
    except preflight.PreflightError as exc:
        detail += f"; {exc}: run with --no-tcp-facts"
    return Finding("tracepoints", OK, detail, basic=True)


def kprobes(sysfs: Path = Path("/sys/bus/event_source/devices"), roots: Sequence[Path] = ()) -> Finding:
    """kprobes: otelbpf does not use them (tracepoints and uprobes only), but other tools and plans do."""
    roots = roots or preflight.TRACEFS_CANDIDATES
    if (sysfs / "kprobe").is_dir() or any((r / "kprobe_events").exists() for r in roots):
        return Finding("kprobes", OK, "available (otelbpf does not need them)")
    return Finding("kprobes", MISSING, "kernel without CONFIG_KPROBES: fine, otelbpf uses tracepoints and uprobes")


def uprobes(sysfs: Path = Path("/sys/bus/event_source/devices")) -> Finding:
    """uprobes: TLS plaintext and function spans."""
    if preflight.uprobes_supported(sysfs):
        return Finding("uprobes", OK, "available: TLS plaintext and function spans can be traced")
    return Finding(
        "uprobes", MISSING, "kernel without CONFIG_UPROBE_EVENTS: no TLS plaintext, no function spans; plain traffic is"
    )


def ring_buffers() -> Finding:
    """BPF ring buffers (Linux 5.8): every record reaches user space through one."""
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        return Finding("ring buffers", UNKNOWN, f"no bpf(2) number known for {platform.machine()}", basic=True)
    # union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size, max_entries, map_flags (then zeros).
    attr = ctypes.create_string_buffer(struct.pack("<IIIII", _BPF_MAP_TYPE_RINGBUF, 0, 0, _RINGBUF_BYTES, 0), 128)
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.syscall(nr, _BPF_MAP_CREATE, attr, ctypes.c_uint(128))
    if fd >= 0:
        os.close(fd)
        return Finding("ring buffers", OK, "BPF_MAP_TYPE_RINGBUF maps can be created", basic=True)
    err = ctypes.get_errno()
    if err in (errno.EPERM, errno.EACCES):
        return Finding("ring buffers", UNKNOWN, "not allowed to create a map to find out (privileges)", basic=True)
    if err == errno.ENOSYS:
        return Finding("ring buffers", MISSING, "the kernel has no bpf(2) (CONFIG_BPF_SYSCALL)", basic=True)
    return Finding(
        "ring buffers", MISSING, f"creating one failed: {os.strerror(err)} (they need Linux 5.8 or later)", basic=True
    )


def _is_script(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"#!"
    except OSError:
        return False


def default_interpreter() -> str:
    """The distribution's python3 where there is one (what system services run), else python3 on PATH."""
    return DISTRIBUTION_PYTHON if os.path.exists(DISTRIBUTION_PYTHON) else "python3"


def usdt(interpreter: str) -> Finding:
    """Whether an interpreter has the USDT probes Python function spans use."""
    path = shutil.which(interpreter) or interpreter
    feature = f"USDT {interpreter}"
    try:
        real = os.path.realpath(path)
        found = stapsdt_probes(real)
    except FileNotFoundError:
        return Finding(feature, MISSING, f"{path}: no such file")
    except ElfError as exc:
        if _is_script(path):
            return Finding(feature, MISSING, f"{path} is a script (a version manager's shim?): give the interpreter")
        return Finding(feature, MISSING, str(exc))
    except OSError as exc:
        return Finding(feature, MISSING, f"cannot read {path}: {exc.strerror or exc}")
    shown = path if real == path else f"{path} -> {real}"
    names = {name for provider, name in found if provider == "python"}
    if all(p in names for p in PYTHON_FUNCTION_PROBES):
        wanted = " and ".join(f"python:{p}" for p in PYTHON_FUNCTION_PROBES)
        return Finding(feature, OK, f"{shown}: {wanted} ({len(found)} USDT probes)")
    if found:
        return Finding(feature, MISSING, f"{shown}: {len(found)} USDT probes, none for Python function calls")
    return Finding(feature, MISSING, f"{shown}: no USDT probes (CPython needs --with-dtrace)")


def tls_libraries(pid: int) -> Finding:
    """The TLS libraries a process maps, and whether otelbpf can hook them."""
    from otelbpf.tls_libraries import LibraryScanner

    feature = f"TLS in pid {pid}"
    if not os.path.exists(f"/proc/{pid}"):
        return Finding(feature, MISSING, "no such process")
    libs = LibraryScanner().libraries_of(pid)
    if libs is None:
        return Finding(feature, UNKNOWN, f"cannot read /proc/{pid}/maps (privileges, or it exited)")
    if not libs:
        return Finding(feature, MISSING, "maps no TLS library otelbpf can hook (OpenSSL, BoringSSL or GnuTLS)")
    return Finding(feature, OK, "; ".join(f"{lib.kind} ({lib.linked}) {lib.label}" for lib in libs))


def run_checks(pids: Sequence[int] = (), interpreters: Sequence[str] | None = None) -> list[Finding]:
    """Every finding, basic features first; interpreters None: the default one."""
    from otelbpf.probes import TCP_TRACEPOINTS, TRACEPOINTS

    findings = [
        privileges(),
        kernel_headers(),
        bcc(),
        btf(),
        tracepoints(TRACEPOINTS, TCP_TRACEPOINTS),
        ring_buffers(),
        uprobes(),
        kprobes(),
    ]
    findings += [usdt(i) for i in ((default_interpreter(),) if interpreters is None else interpreters)]
    findings += [tls_libraries(p) for p in pids]
    return findings


def report(findings: Sequence[Finding]) -> tuple[str, int]:
    """The report's text and the command's exit code: 1 when a basic feature is missing or unknown."""
    width = max(len(f.feature) for f in findings) if findings else 0
    lines = [f.line(width) for f in findings]
    broken = [f.feature for f in findings if f.basic and f.state != OK]
    if broken:
        lines.append(f"otelbpf cannot run here: {', '.join(broken)} (see above)")
        return "\n".join(lines), 1
    lines.append(f"otelbpf can run here (kernel {os.uname().release})")
    return "\n".join(lines), 0
