"""Per-process TLS probes: which library files are hooked for which traced process, within a budget.

A uprobe attached with a pid fires only in that process: the kernel installs its breakpoint in that
process's memory map alone, so an untraced process mapping the same library pays nothing. The probe
follows its process across exec (the filter follows the task, and the breakpoint goes into the new
program when it maps the file), but not into a forked child: the child gets a new memory map, traps
once on the copied breakpoint, which the kernel then removes, and needs probes of its own.

Each probe is a perf-event file descriptor, and taking one down costs the kernel about 100 ms here
(a grace period) during which any other attach waits. So probes of ended processes are queued and
taken down one at a time when nothing more urgent is waiting (reclaim_one), and the number of live
per-process probes is capped: past the cap, a library is hooked file-wide instead.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from otelbpf.tls_libraries import TlsLibrary

logger = logging.getLogger(__name__)

# attach(path, kind, symbols, pid=, addresses=) -> probes attached; raises on failure (KernelProbes.attach_tls).
ProcessAttachFn = Callable[..., int]
# detach(path, pid) -> probes taken down (KernelProbes.detach_tls).
DetachFn = Callable[[str, int], int]
# report_exit(pid, wanted): have the kernel report pid's end, or stop (KernelProbes.report_exit).
ReportExitFn = Callable[[int, bool], None]

FileId = tuple[int, int]


@dataclass
class ProcessProbeStats:
    """What was attached per process over the run, for the end-of-run summary."""

    processes_hooked: int = 0  # processes given per-process probes
    probes_attached: int = 0
    probes_detached: int = 0
    peak_open: int = 0  # most per-process probes open at once, live or waiting to be taken down
    libraries_over_cap: int = 0  # libraries hooked file-wide because the cap was reached


@dataclass(frozen=True)
class _Hook:
    lib: TlsLibrary
    path: str  # as attached: the key to take it down
    probes: int


def path_for(lib: TlsLibrary, pid: int) -> str:
    """lib's path as pid sees it: a /proc/PID path found through another process is redirected to pid's.

    A map_files path carries over only to a process with the same memory map: a child forked from that process.
    """
    if lib.pid is not None:
        for kind in ("root", "map_files"):
            prefix = f"/proc/{lib.pid}/{kind}/"
            if lib.path.startswith(prefix):
                return f"/proc/{pid}/{kind}/{lib.path[len(prefix) :]}"
    return lib.path


class ProcessProbes:
    """TLS probes attached per process: live ones by pid and library, ended ones waiting to be taken down."""

    def __init__(self, attach: ProcessAttachFn, detach: DetachFn, report_exit: ReportExitFn, max_probes: int) -> None:
        if max_probes < 0:
            raise ValueError(f"the per-process probe budget must be 0 or more, got {max_probes}")
        self._attach = attach
        self._detach = detach
        self._report_exit = report_exit
        self.max_probes = max_probes
        self._live: dict[int, dict[FileId, _Hook]] = {}
        self._ended: deque[tuple[int, _Hook]] = deque()
        self.live_probes = 0
        self.ended_probes = 0
        self.stats = ProcessProbeStats()

    def pids(self) -> set[int]:
        """Processes that have per-process probes now."""
        return set(self._live)

    def has(self, pid: int, file_id: FileId) -> bool:
        """Whether pid has probes on this library file."""
        return file_id in self._live.get(pid, {})

    def libraries(self, pid: int) -> list[TlsLibrary]:
        """The library files hooked for pid (what a forked child maps too)."""
        return [hook.lib for hook in self._live.get(pid, {}).values()]

    def attach(self, lib: TlsLibrary, pid: int) -> int | None:
        """Hook lib for pid; the probes attached (0 if it already was), None if the cap forbids it.

        Raises what the attach raises (a process that has ended, a file that cannot be probed).
        """
        hooks = self._live.get(pid, {})
        if lib.file_id in hooks:
            return 0
        wanted = 2 * len(lib.symbols)  # an entry and a return probe per function
        if self.live_probes + wanted > self.max_probes:
            return None
        path = path_for(lib, pid)
        n = self._attach(path, lib.kind, lib.symbols, pid=pid, addresses=lib.addresses)
        if not hooks:
            self._live[pid] = hooks
            self.stats.processes_hooked += 1
            self._report_exit(pid, True)
        hooks[lib.file_id] = _Hook(lib, path, n)
        self.live_probes += n
        self.stats.probes_attached += n
        self.stats.peak_open = max(self.stats.peak_open, self.live_probes + self.ended_probes)
        return n

    def forget(self, pid: int) -> None:
        """pid ended (or its pid is about to name another process): queue its probes to be taken down."""
        hooks = self._live.pop(pid, None)
        if hooks is None:
            return
        self._report_exit(pid, False)
        for hook in hooks.values():
            self._retire(pid, hook)

    def drop_library(self, file_id: FileId) -> None:
        """Queue every process's probes on this file to be taken down (it is now hooked file-wide)."""
        for pid, hooks in list(self._live.items()):
            hook = hooks.pop(file_id, None)
            if hook is not None:
                self._retire(pid, hook)
            if not hooks:
                del self._live[pid]
                self._report_exit(pid, False)

    def _retire(self, pid: int, hook: _Hook) -> None:
        self.live_probes -= hook.probes
        self.ended_probes += hook.probes
        self._ended.append((pid, hook))

    def reclaim_one(self) -> bool:
        """Take down one ended process's probes on one library; False when none are waiting. Blocks ~100 ms
        a probe, and attaches wait meanwhile: call it when nothing more urgent is pending."""
        if not self._ended:
            return False
        pid, hook = self._ended.popleft()
        self.ended_probes -= hook.probes
        self.stats.probes_detached += self._detach(hook.path, pid)
        return True

    def reclaim_urgent(self) -> bool:
        """Whether ended probes are piling up beyond the budget: take them down even if processes are busy."""
        return self.ended_probes > max(self.max_probes, 64)
