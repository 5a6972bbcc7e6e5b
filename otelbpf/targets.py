"""Which processes to trace: --pid, --exe, --port and --container resolved against the running system."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from otelbpf.containers import CgroupContainer, container_of

logger = logging.getLogger(__name__)


class TargetError(ValueError):
    """A target selection that cannot be satisfied (for example, a pid that does not exist)."""


@dataclass
class TargetSpec:
    """The user's selection; empty means every process."""

    pids: list[int] = field(default_factory=list)
    exes: list[str] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    containers: list[str] = field(default_factory=list)

    @property
    def trace_all(self) -> bool:
        """True when no selector was given."""
        return not (self.pids or self.exes or self.ports or self.containers)

    def describe(self) -> str:
        """A short human description for log lines."""
        if self.trace_all:
            return "all processes"
        parts = [f"pid {p}" for p in self.pids] + [f"exe {e}" for e in self.exes]
        parts += [f"port {p}" for p in self.ports]
        parts += [f"container {c}" for c in self.containers]
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


def resolve(spec: TargetSpec, self_pid: int | None = None, containers: ContainerWatch | None = None) -> set[int]:
    """Current pids for the selection, with their descendants; otelbpf itself is never included.

    ``containers`` finds the processes of spec.containers (and keeps what it saw, for its later scans).
    """
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
    if containers is not None:
        pids.update(containers.scan())
    pids = _with_descendants(pids)
    pids.discard(self_pid)
    return pids


_HEX_PREFIX = re.compile(r"^[0-9a-f]{4,64}$")
# A process first seen outside any container is looked at once more, at the next scan: a runtime's
# init process (runc init) is forked in the runtime's cgroup and moved into the container's just after.
_LOOKS = 2


class ContainerWatch:
    """The processes of the --container selection: those running now, and at each scan those started since.

    A selector is a full container id, an id prefix of 4 hex digits or more, a runtime's container
    name, or ``namespace/pod/container`` under Kubernetes. Each scan lists /proc and reads the cgroup
    file of processes it has not settled yet (new ones), so it costs a directory listing plus one small
    read per new process; names are asked of the runtime once per container (``names``, cached there).
    """

    def __init__(
        self, selectors: list[str], names: Callable[[CgroupContainer], tuple[str, ...]], proc: str = "/proc"
    ) -> None:
        self.selectors = [s.strip().lstrip("/") for s in selectors if s.strip()]
        self._names = names
        self._proc = proc
        self._looks_left: dict[int, int] = {}  # pid -> looks before it is settled as not selected
        self._settled: set[int] = set()
        self._selected: dict[str, str] = {}  # container id -> the selector it matched ("" for none)
        self.matched: dict[str, set[str]] = {}  # selector -> container ids it matched so far

    def selector_for(self, ref: CgroupContainer) -> str:
        """The selector a container matches, or "" (decided once per container)."""
        hit = self._selected.get(ref.id)
        if hit is not None:
            return hit
        found = next((s for s in self.selectors if s == ref.id or (_HEX_PREFIX.match(s) and ref.id.startswith(s))), "")
        if not found:
            names = set(self._names(ref))
            found = next((s for s in self.selectors if s in names), "")
        if len(self._selected) >= 65536:  # bounded: long-gone containers are forgotten
            self._selected.clear()
        self._selected[ref.id] = found
        if found:
            self.matched.setdefault(found, set()).add(ref.id)
        return found

    def scan(self) -> dict[int, CgroupContainer]:
        """Processes of selected containers not reported before: pid -> its container."""
        try:
            live = {int(e) for e in os.listdir(self._proc) if e.isdigit()}
        except OSError as exc:
            logger.warning("cannot list %s: %s", self._proc, exc)
            return {}
        self._settled &= live
        for pid in [p for p in self._looks_left if p not in live]:
            del self._looks_left[pid]
        found: dict[int, CgroupContainer] = {}
        for pid in live - self._settled:
            ref = container_of(pid, self._proc)
            if ref is not None and self.selector_for(ref):
                found[pid] = ref
                self._settled.add(pid)
                self._looks_left.pop(pid, None)
                continue
            left = self._looks_left.get(pid, _LOOKS) - 1
            if left <= 0:
                self._settled.add(pid)
                self._looks_left.pop(pid, None)
            else:
                self._looks_left[pid] = left
        return found

    def ambiguous(self) -> dict[str, set[str]]:
        """Id prefixes that matched more than one container (docker refuses those)."""
        return {s: ids for s, ids in self.matched.items() if len(ids) > 1 and s not in ids}

    def not_running(self) -> list[str]:
        """Selectors no container has matched yet."""
        return [s for s in self.selectors if s not in self.matched]
