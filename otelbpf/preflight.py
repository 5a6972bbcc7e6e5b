"""Checks that turn a missing kernel feature or privilege into one clear line before bcc runs."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from otelbpf.btf import DEFAULT_VMLINUX_BTF

TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))


class PreflightError(RuntimeError):
    """The machine cannot run otelbpf as it is; the message says what to do."""


# Capability bits (linux/capability.h). CAP_BPF and CAP_PERFMON split CAP_SYS_ADMIN's eBPF rights in Linux 5.8.
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


def effective_capabilities(status: Path = Path("/proc/self/status")) -> int | None:
    """This process's effective capability mask, or None where /proc does not say."""
    try:
        for line in status.read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        pass
    return None


def check_root(status: Path = Path("/proc/self/status")) -> None:
    """otelbpf loads eBPF programs, which needs root, and root's capabilities (a container may drop them)."""
    if os.geteuid() != 0:
        raise PreflightError(
            "otelbpf must run as root (it loads eBPF programs: CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN); "
            "try: sudo otelbpf run ..."
        )
    caps = effective_capabilities(status)
    if caps is None or caps >> CAP_SYS_ADMIN & 1 or (caps >> CAP_BPF & 1 and caps >> CAP_PERFMON & 1):
        return
    raise PreflightError(
        "running as root but without the capabilities to load eBPF programs (CAP_BPF and CAP_PERFMON, or "
        "CAP_SYS_ADMIN); in a container, run it privileged (docker run --privileged --pid host)"
    )


def tracefs_root() -> Path:
    """The mounted tracefs, mounting it at /sys/kernel/tracing if needed."""
    for root in TRACEFS_CANDIDATES:
        if (root / "events").is_dir():
            return root
    # A fresh boot may not have tracefs mounted; bcc needs it to attach tracepoints.
    subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS_CANDIDATES[0])], capture_output=True, check=False)
    if (TRACEFS_CANDIDATES[0] / "events").is_dir():
        return TRACEFS_CANDIDATES[0]
    raise PreflightError("tracefs is not available (kernel built without CONFIG_TRACING?): cannot attach tracepoints")


def check_tracepoints(names: list[str], root: Path | None = None) -> None:
    """Every tracepoint the probes attach to exists in this kernel."""
    root = (root or tracefs_root()) / "events"
    missing = [n for n in names if not (root / n.replace(":", "/") / "format").exists()]
    if missing:
        hint = " (syscall tracepoints need CONFIG_FTRACE_SYSCALLS)" if any("syscalls" in m for m in missing) else ""
        raise PreflightError(f"kernel lacks tracepoint(s) {', '.join(missing)}{hint}")


def check_btf(path: str = DEFAULT_VMLINUX_BTF) -> None:
    """Socket field offsets come from kernel BTF."""
    if not os.path.exists(path):
        raise PreflightError(f"kernel BTF not found at {path} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")


def check_kernel_headers(modules: Path = Path("/lib/modules"), release: str | None = None) -> None:
    """bcc compiles at run time against /lib/modules/$(uname -r)/build."""
    build = modules / (release or os.uname().release) / "build"
    if not (build / "include").is_dir():
        raise PreflightError(
            f"kernel headers not found at {build}: install them, or run 'make setup', which links the "
            "distribution's nearest headers"
        )


def uprobes_supported(sysfs: Path = Path("/sys/bus/event_source/devices")) -> bool:
    """Whether the kernel can attach uprobes (CONFIG_UPROBE_EVENTS): needed for TLS plaintext only."""
    if (sysfs / "uprobe").is_dir():
        return True
    return any((root / "uprobe_events").exists() for root in TRACEFS_CANDIDATES)
