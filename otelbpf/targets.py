"""Which processes to trace: --pid, --exe and --port resolved against the running system."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import psutil

logger = logging.getLogger(__name__)


class TargetError(ValueError):
    """A target selection that cannot be satisfied (for example, a pid that does not exist)."""


@dataclass
class TargetSpec:
    """The user's selection; empty means every process."""

    pids: list[int] = field(default_factory=list)
    exes: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)

    @property
    def trace_all(self) -> bool:
        """True when no selector was given."""
        return not (self.pids or self.exes or self.ports)

    def describe(self) -> str:
        """A short human description for log lines."""
        if self.trace_all:
            return "all processes"
        parts = [f"pid {p}" for p in self.pids] + [f"exe {e}" for e in self.exes]
        parts += [f"port {p}" for p in self.ports]
        return ", ".join(parts)


def _with_descendants(pids: set[int]) -> set[int]:
    out = set(pids)
    for pid in pids:
        try:
            out.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
    return out


def _exe_matches(proc: psutil.Process, names: set[str]) -> bool:
    try:
        name = proc.name()
        if name in names or name[:15] in {n[:15] for n in names}:
            return True
        exe = proc.exe()
        return bool(exe) and os.path.basename(exe) in names
    except psutil.Error:
        return False


def exes_not_running(names: list[str]) -> list[str]:
    """The --exe names that no running process matches (yet)."""
    procs = list(psutil.process_iter())
    return [name for name in names if not any(_exe_matches(p, {name}) for p in procs)]


def listening_pids(ports: list[int]) -> set[int]:
    """Processes with a TCP socket listening on any of these ports."""
    wanted = set(ports)
    out: set[int] = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port in wanted and conn.pid:
            out.add(conn.pid)
    return out


def resolve(spec: TargetSpec, self_pid: int | None = None) -> set[int]:
    """Current pids for the selection, with their descendants; otelbpf itself is never included."""
    self_pid = os.getpid() if self_pid is None else self_pid
    pids: set[int] = set()
    for pid in spec.pids:
        if pid <= 0 or not psutil.pid_exists(pid):
            raise TargetError(f"no process with pid {pid}")
        pids.add(pid)
    if spec.exes:
        names = set(spec.exes)
        pids.update(p.pid for p in psutil.process_iter() if _exe_matches(p, names))
    if spec.ports:
        pids.update(listening_pids(spec.ports))
    pids = _with_descendants(pids)
    pids.discard(self_pid)
    return pids
