"""Keeps TLS libraries hooked for traced processes, file-wide or per process.

Tracing everything, a uprobe on a file serves every process that maps it, including processes
started later: the system's libssl and libgnutls are hooked at start, then each file a process maps
that was never attached (a venv's or wheel's own libssl, a statically linked binary such as node, a
library loaded late with dlopen) as it is found: when a program starts (exec) and by a periodic scan.

Tracing chosen processes, a file-wide uprobe would make every other process that maps the library
trap too. So probes go on per process (otelbpf.tls_processes): at start for the processes traced
then, and as the kernel reports each traced process's fork (the child gets what its parent has),
exec, executable file mapping (the loader, dlopen) and end. The periodic scan remains as a backstop.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from otelbpf.events import TASK_EXEC, TASK_EXIT, TASK_FORK, TASK_MAP, TaskEvent
from otelbpf.tls_libraries import LibraryScanner, TlsLibrary, classify, system_libraries
from otelbpf.tls_processes import ProcessProbes

logger = logging.getLogger(__name__)

# attach(path, kind, symbols, [addresses=]) -> probes attached; raises on failure (KernelProbes.attach_tls).
AttachFn = Callable[..., int]


class TlsConfigError(ValueError):
    """A TLS library named by the user that cannot be hooked."""


def user_libraries(paths: Iterable[str]) -> list[TlsLibrary]:
    """Classify the files named with --tls-library; raise TlsConfigError for any that cannot be hooked.

    Runs before the kernel programs are compiled, so a typo costs no start-up time.
    """
    libs = []
    for path in paths:
        if not os.path.isfile(path):
            raise TlsConfigError(f"--tls-library {path}: no such file")
        lib = classify(path)
        if lib is None:
            raise TlsConfigError(
                f"--tls-library {path}: not a TLS library otelbpf can hook (it exports neither "
                "SSL_read and SSL_write nor gnutls_record_recv and gnutls_record_send)"
            )
        libs.append(lib)
    return libs


@dataclass
class HookDelays:
    """How long processes ran unhooked: from the kernel's event (exec, fork, mapping) to the last probe in."""

    count: int = 0
    max_us: int = 0
    _sample: list[int] = field(default_factory=list, repr=False)

    def add(self, us: int) -> None:
        """Record one delay in microseconds."""
        self.count += 1
        self.max_us = max(self.max_us, us)
        if len(self._sample) < 4096:  # enough for a median; bounded over a long run
            self._sample.append(us)

    @property
    def median_us(self) -> int:
        """The median delay (of the first 4096), 0 when none."""
        return int(statistics.median(self._sample)) if self._sample else 0


@dataclass
class TlsWatchStats:
    """What the watcher did, for the end-of-run summary."""

    libraries_attached: int = 0
    probes_attached: int = 0
    attach_failures: int = 0
    system_file_wide: int = 0  # system libraries hooked file-wide under per-process attach (for launchers)
    after_exec: HookDelays = field(default_factory=HookDelays)
    after_fork: HookDelays = field(default_factory=HookDelays)
    after_map: HookDelays = field(default_factory=HookDelays)


_EVENT_NAMES = {TASK_EXEC: "exec", TASK_FORK: "fork", TASK_MAP: "mapping"}


class TlsWatcher:
    """Attaches TLS probes to library files as traced processes come to map them.

    Without ``processes``, each file is hooked once, file-wide; with it, each file per traced process.
    Not thread-safe: one thread (otelbpf.tls_follow) makes every call after start().
    """

    def __init__(
        self,
        attach: AttachFn,
        pids: Callable[[], Iterable[int]],
        scanner: LibraryScanner | None = None,
        user: Iterable[TlsLibrary] = (),
        processes: ProcessProbes | None = None,
        clock_ns: Callable[[], int] = time.monotonic_ns,
        system_file_wide: bool = False,
    ) -> None:
        self._attach = attach
        self._pids = pids
        self._scanner = scanner or LibraryScanner()
        self._user = list(user)
        self._processes = processes
        self._clock_ns = clock_ns
        # Per process, but the system's libssl/libgnutls file-wide as well: a traced launcher's programs.
        self._system_file_wide = system_file_wide
        # Files hooked file-wide: all of them tracing everything; per process, those past the cap.
        self._attached: set[tuple[int, int]] = set()
        self._per_process_files: set[tuple[int, int]] = set()
        self._seen: set[int] = set()  # processes given the user's libraries already
        self.stats = TlsWatchStats()

    @property
    def processes(self) -> ProcessProbes | None:
        """The per-process probes, or None when libraries are hooked file-wide (tracing everything)."""
        return self._processes

    def start(self) -> None:
        """Hook the user's libraries, the system's, and those mapped by traced processes now.

        Tracing everything, the system's libssl and libgnutls are hooked even when no process maps them
        yet: a process that loads them later (a short-lived client) is then covered from its first call.
        """
        if self._processes is not None:
            for lib in self._user:
                if not os.path.isfile(lib.path):
                    raise TlsConfigError(f"--tls-library {lib.path}: no such file")
            if self._system_file_wide:
                # A program a traced launcher starts does its first TLS call within milliseconds, before a
                # per-process attach (an RCU grace period a probe, ~30 ms here) could be in place.
                self.stats.system_file_wide += self._hook_system()
            self.poll()
            return
        for lib in self._user:
            self._hook(lib, required=True)
        self._hook_system()
        self.poll()

    def _hook_system(self) -> int:
        """Hook the system's libssl and libgnutls file-wide; how many files were attached."""
        libs = system_libraries()
        hooked = sum(1 for lib in libs if self._hook(lib))
        self._scanner.mark_known(libs)
        return hooked

    def poll(self) -> None:
        """Scan traced processes for library files not hooked yet, and hook them."""
        if self._processes is None:
            for lib in self._scanner.scan(self._pids()):
                self._hook(lib)
            return
        live = set(self._pids())
        for pid in sorted(live):
            self._sync(pid)
        # Ended without an exit record (it raced the kernel being told), or no longer traced.
        for pid in self._processes.pids() - live:
            self._forget(pid)
        self._seen &= live

    def add_processes(self, pids: Iterable[int]) -> None:
        """Processes that became traced outside the kernel's fork and exec following (a --port rescan)."""
        for pid in pids:
            self._sync(pid)

    def on_task(self, ev: TaskEvent) -> None:
        """React to one process event from the kernel (events.TASK_*)."""
        if ev.kind == TASK_EXIT:
            self._forget(ev.pid)
            return
        if ev.kind == TASK_FORK:
            if self._processes is None:
                return
            self._forget(ev.pid)  # a new process: whatever this pid named before has ended
            done = sum(self._hook_for(lib, ev.pid) for lib in self._processes.libraries(ev.parent))
            done += self._sync(ev.pid)
        elif self._processes is None:
            # A new program, tracing everything: only files never hooked need attaching.
            done = sum(self._hook(lib) for lib in self._scanner.libraries_of(ev.pid) or ())
            self._scanner.forget(ev.pid)
        else:
            done = self._sync(ev.pid)
        if done:
            self._record_delay(ev)

    def reclaim_one(self) -> bool:
        """Take down one ended process's probes on one library (slow: see ProcessProbes.reclaim_one)."""
        return self._processes is not None and self._processes.reclaim_one()

    def reclaim_urgent(self) -> bool:
        """Whether probes of ended processes pile up past the budget and must go even while processes start."""
        return self._processes is not None and self._processes.reclaim_urgent()

    def _record_delay(self, ev: TaskEvent) -> None:
        us = max(0, (self._clock_ns() - ev.ns) // 1000)
        delays = {TASK_EXEC: self.stats.after_exec, TASK_FORK: self.stats.after_fork}.get(ev.kind, self.stats.after_map)
        delays.add(us)
        logger.info("TLS: pid %d hooked %.1f ms after its %s", ev.pid, us / 1000, _EVENT_NAMES.get(ev.kind, "event"))

    def _sync(self, pid: int) -> int:
        """Hook, for pid, the libraries it maps that are not hooked for it yet (and the user's, once)."""
        libs = self._scanner.libraries_of(pid) or []
        if pid not in self._seen:
            self._seen.add(pid)
            libs = self._user + libs
        return sum(self._hook_for(lib, pid) for lib in libs)

    def _forget(self, pid: int) -> None:
        self._scanner.forget(pid)
        self._seen.discard(pid)
        if self._processes is not None:
            self._processes.forget(pid)

    def _hook_for(self, lib: TlsLibrary, pid: int) -> int:
        """Hook lib for pid (per process, or file-wide once past the cap); the probes attached."""
        assert self._processes is not None
        if lib.file_id in self._attached:
            return 0  # hooked file-wide: serves pid already
        t0 = time.monotonic()
        try:
            n = self._processes.attach(lib, pid)
        except Exception as exc:  # one bad file or an ended process must not stop the others, nor the run
            logger.debug(
                "TLS: attach to %s for pid %d failed after %.1f ms", lib.label, pid, (time.monotonic() - t0) * 1000
            )
            if _running(pid):
                self.stats.attach_failures += 1
                logger.warning("TLS: could not attach to %s for pid %d: %s", lib.label, pid, exc)
            else:
                logger.debug("TLS: pid %d ended before %s was attached: %s", pid, lib.label, exc)
            return 0
        if n is None:
            logger.warning(
                "TLS: %d per-process probes reached the budget (--tls-max-process-probes %d): %s is hooked "
                "file-wide from now on, so every process that maps it pays its probes",
                self._processes.live_probes,
                self._processes.max_probes,
                lib.label,
            )
            self._processes.stats.libraries_over_cap += 1
            n = self._hook(lib)
            if n:
                self._processes.drop_library(lib.file_id)
            return n
        if n:
            if lib.file_id not in self._per_process_files:
                self._per_process_files.add(lib.file_id)
                self.stats.libraries_attached += 1
            self.stats.probes_attached += n
            ms = (time.monotonic() - t0) * 1000
            logger.info(
                "TLS: attached %s (%s) %s: %d probes for pid %d (in %.1f ms)",
                lib.kind,
                lib.linked,
                lib.label,
                n,
                pid,
                ms,
            )
        return n

    def _hook(self, lib: TlsLibrary, required: bool = False) -> int:
        """Hook lib file-wide, once; the probes attached."""
        if lib.file_id in self._attached:
            return 0
        extra = {"addresses": lib.addresses} if lib.addresses else {}
        try:
            n = self._attach(lib.path, lib.kind, lib.symbols, **extra)
        except Exception as exc:  # one bad file must not stop the others, nor the run
            if required:
                raise TlsConfigError(str(exc)) from exc
            self.stats.attach_failures += 1
            logger.warning("TLS: could not attach to %s: %s", lib.label, exc)
            return 0
        self._attached.add(lib.file_id)
        self.stats.libraries_attached += 1
        self.stats.probes_attached += n
        seen_in = f" (mapped by pid {lib.pid})" if lib.pid else ""
        logger.info("TLS: attached %s (%s) %s: %d probes%s", lib.kind, lib.linked, lib.label, n, seen_in)
        return n


def _running(pid: int) -> bool:
    """True while pid runs: an exiting process (a zombie, or gone) makes a failed attach no fault of ours."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    # The state follows the command name, which may itself hold ")" : take the last one.
    return stat[stat.rfind(b")") + 2 : stat.rfind(b")") + 3] not in (b"Z", b"X", b"x")
