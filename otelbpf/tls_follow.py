"""The thread that keeps TLS libraries hooked while traced processes fork, exec, map files and end.

It reads the kernel's process events (the task_events ring buffer, each record waking it at once)
and hands them to the TlsWatcher, runs the periodic library scan, and takes down the probes of ended
processes when nothing else is waiting. It is off the drain thread so that hooking a new program
never waits behind a batch of requests, and it runs at normal priority while the rest of the
collector yields (SCHED_IDLE): a new program must be hooked before its first TLS call, a few tens of
milliseconds after exec for node here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace

from otelbpf.events import TASK_MAP, DecodeError, TaskEvent, decode_task
from otelbpf.ringbuf import RingBufferReader
from otelbpf.tls_watch import TlsWatcher

logger = logging.getLogger(__name__)

# Probes of ended processes are taken down only after this long without process events: each removal
# holds up any attach for ~100 ms, and processes tend to start in bursts.
QUIET_S = 1.0


class TlsFollower:
    """Feeds process events and periodic scans to a TlsWatcher, on a thread of its own."""

    def __init__(self, watcher: TlsWatcher, ring_fd: int, ring_size: int, scan_interval_s: float) -> None:
        self._watcher = watcher
        self._reader = RingBufferReader(ring_fd, ring_size)
        self._scan_interval_s = scan_interval_s
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll = select.epoll()
        self._epoll.register(ring_fd, select.EPOLLIN)
        self._epoll.register(self._wake, select.EPOLLIN)
        self._lock = threading.Lock()
        self._added: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="otelbpf-tls", daemon=True)
        self.malformed = 0

    def start(self) -> None:
        """Start following."""
        self._thread.start()

    def add_processes(self, pids: Iterable[int]) -> None:
        """Processes newly traced from user space (a --port rescan); safe from any thread."""
        with self._lock:
            self._added.extend(pids)
        os.eventfd_write(self._wake, 1)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the thread (it finishes what it is doing: an attach, or one probe's removal); idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        os.eventfd_write(self._wake, 1)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.warning("the TLS thread did not stop within %.0f s", timeout_s)
            return
        self._epoll.close()
        self._reader.close()
        os.close(self._wake)

    def _run(self) -> None:
        background = current_priority()
        normal_priority()
        now = time.monotonic()
        next_scan = now + self._scan_interval_s if self._scan_interval_s > 0 else float("inf")
        last_event = now
        while not self._stop.is_set():
            now = time.monotonic()
            idle_for = now - last_event
            reclaim = self._watcher.reclaim_urgent() or idle_for >= QUIET_S
            timeout = 0.0 if reclaim else min(next_scan - now, QUIET_S - idle_for)
            self._wait(max(0.0, timeout))
            if self._stop.is_set():
                break
            try:
                got = self._handle_events()
                now = time.monotonic()
                if got:
                    last_event = now
                if now >= next_scan:
                    next_scan = now + self._scan_interval_s
                    # The backstop scan reads every traced process's maps: the applications come first.
                    with at_priority(background):
                        self._watcher.poll()
                elif self._watcher.reclaim_urgent() or (not got and now - last_event >= QUIET_S):
                    # One removal at a time, then back to the events: a new program must not wait long.
                    with at_priority(background):
                        reclaimed = self._watcher.reclaim_one()
                    if not reclaimed:
                        last_event = now  # nothing to take down: sleep until the next event
            except Exception:  # a bug here must not end TLS following for the rest of the run
                logger.exception("TLS thread: unexpected error")
                time.sleep(0.1)

    def _wait(self, timeout_s: float) -> bool:
        """Sleep until an event, an added process or the timeout; whether anything arrived."""
        try:
            ready = self._epoll.poll(timeout_s)
        except InterruptedError:
            return False
        for fd, _ in ready:
            if fd == self._wake:
                try:
                    os.eventfd_read(self._wake)
                except BlockingIOError:
                    pass
        return bool(ready)

    def _handle_events(self) -> int:
        """Hand pending process events and added processes to the watcher; how many there were."""
        with self._lock:
            added, self._added = self._added, []
        if added:
            self._watcher.add_processes(added)
        records = self._reader.drain()
        decoded = []
        for raw in records:
            try:
                decoded.append(decode_task(raw))
            except DecodeError as exc:
                self.malformed += 1
                logger.warning("malformed process event: %s", exc)
        for ev in coalesce_mappings(decoded):
            self._watcher.on_task(ev)
        return len(added) + len(records)


def coalesce_mappings(evs: list[TaskEvent]) -> list[TaskEvent]:
    """The events in order, less each mapping that a later mapping of the same process covers.

    The loader maps a program's libraries one after the other, and handling a mapping reads the
    process's whole /proc/PID/maps: only the last of a run needs handling. It takes the run's earliest
    time, so that the hook delay is still measured from the first mapping.
    """
    out: list[TaskEvent] = []
    later: dict[int, int] = {}  # pid -> index in out of its next mapping, walking backwards
    for ev in reversed(evs):
        if ev.kind == TASK_MAP:
            k = later.get(ev.pid)
            if k is not None:
                out[k] = replace(out[k], ns=min(out[k].ns, ev.ns))
                continue
            later[ev.pid] = len(out)
        else:
            later.pop(ev.pid, None)  # a fork, exec or exit of the process ends the run
        out.append(ev)
    out.reverse()
    return out


Priority = tuple[int, int, int]  # (policy, static priority, nice)


def current_priority() -> Priority:
    """The calling thread's scheduling policy, static priority and nice value."""
    try:
        return (
            os.sched_getscheduler(0),
            os.sched_getparam(0).sched_priority,
            os.getpriority(os.PRIO_PROCESS, threading.get_native_id()),
        )
    except OSError:
        return os.SCHED_OTHER, 0, 0


@contextlib.contextmanager
def at_priority(priority: Priority) -> Iterator[None]:
    """Run a block at the given priority (the collector's own, SCHED_IDLE by default), then at normal again."""
    policy, static, nice = priority
    try:
        os.sched_setscheduler(0, policy, os.sched_param(static))
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
    except OSError as exc:
        logger.debug("TLS thread keeps normal priority for background work: %s", exc)
    try:
        yield
    finally:
        normal_priority()


def normal_priority() -> None:
    """Run the calling thread at normal priority, whatever the process's (SCHED_IDLE or nice)."""
    try:
        # With pid 0 both calls act on the calling thread alone on Linux.
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 0)
    except OSError as exc:
        logger.debug("TLS thread keeps the collector's priority: %s", exc)
