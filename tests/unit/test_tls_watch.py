"""TlsWatcher: which library files get attached, file-wide once each or per traced process, and what a failure costs."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import replace

import pytest

from otelbpf import tls_watch
from otelbpf.events import TASK_EXEC, TASK_EXIT, TASK_FORK, TASK_MAP, TaskEvent
from otelbpf.tls_libraries import TlsLibrary
from otelbpf.tls_processes import ProcessProbes
from otelbpf.tls_watch import TlsConfigError, TlsWatcher, user_libraries
from tests.unit.tls_fakes import FakeTlsKernel as Kernel

SYSTEM_SSL = TlsLibrary("openssl", "/usr/lib/libssl.so.3", (1, 10), ("SSL_read", "SSL_write"), "shared")
SYSTEM_GNUTLS = TlsLibrary("gnutls", "/usr/lib/libgnutls.so.30", (1, 11), ("gnutls_record_recv",), "shared")
NODE = TlsLibrary("openssl", "/usr/bin/node", (1, 12), ("SSL_read", "SSL_write"), "static", pid=77)
VENV_SSL = TlsLibrary("openssl", "/venv/libssl-abc.so.3", (1, 13), ("SSL_read", "SSL_write"), "shared", pid=78)


class FakeScanner:
    """Hands out queued scan results; records what it was told is known."""

    def __init__(self, results: list[list[TlsLibrary]]) -> None:
        self.results = results
        self.known: list[TlsLibrary] = []
        self.scanned: list[list[int]] = []

    def scan(self, pids: Iterable[int]) -> list[TlsLibrary]:
        self.scanned.append(sorted(pids))
        return self.results.pop(0) if self.results else []

    def mark_known(self, libs: Iterable[TlsLibrary]) -> None:
        self.known.extend(libs)


class Attacher:
    def __init__(self, fail: set[str] = frozenset()) -> None:
        self.calls: list[tuple[str, str]] = []
        self.fail = fail

    def __call__(self, path: str, kind: str, symbols: tuple[str, ...]) -> int:
        if path in self.fail:
            raise RuntimeError("uprobe refused")
        self.calls.append((path, kind))
        return 2 * len(symbols)


@pytest.fixture(autouse=True)
def system(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls_watch, "system_libraries", lambda: [SYSTEM_SSL, SYSTEM_GNUTLS])


def test_system_libraries_then_scans_each_file_once() -> None:
    attach = Attacher()
    scanner = FakeScanner([[NODE], [NODE, VENV_SSL], []])
    watcher = TlsWatcher(attach, lambda: {5, 3}, scanner=scanner)
    watcher.start()
    watcher.poll()
    watcher.poll()
    assert attach.calls == [
        ("/usr/lib/libssl.so.3", "openssl"),
        ("/usr/lib/libgnutls.so.30", "gnutls"),
        ("/usr/bin/node", "openssl"),
        ("/venv/libssl-abc.so.3", "openssl"),
    ]
    assert scanner.known == [SYSTEM_SSL, SYSTEM_GNUTLS]  # never re-reported by scans
    assert scanner.scanned == [[3, 5]] * 3
    assert watcher.stats.libraries_attached == 4
    assert watcher.stats.probes_attached == 2 * (2 + 1 + 2 + 2)
    assert watcher.stats.attach_failures == 0


def test_a_failed_attach_is_counted_and_the_rest_go_on(caplog: pytest.LogCaptureFixture) -> None:
    attach = Attacher(fail={"/usr/bin/node"})
    watcher = TlsWatcher(attach, lambda: [1], scanner=FakeScanner([[NODE, VENV_SSL]]))
    watcher.start()
    assert ("/venv/libssl-abc.so.3", "openssl") in attach.calls
    assert watcher.stats.attach_failures == 1
    assert watcher.stats.libraries_attached == 3
    assert "could not attach to /usr/bin/node" in caplog.text


def test_user_library_that_is_not_tls_is_an_error(tmp_path) -> None:
    plain = tmp_path / "libnothing.so"
    plain.write_bytes(b"\x7fELF not really")
    with pytest.raises(TlsConfigError, match="libnothing.so: not a TLS library"):
        user_libraries([str(plain)])
    with pytest.raises(TlsConfigError, match="/no/such/libssl.so.3: no such file"):
        user_libraries(["/no/such/libssl.so.3"])


def test_user_library_is_classified(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    lib = tmp_path / "libssl.so.3"
    lib.write_bytes(b"")
    monkeypatch.setattr(tls_watch, "classify", lambda path: VENV_SSL if path == str(lib) else None)
    assert user_libraries([str(lib)]) == [VENV_SSL]


def test_user_library_that_fails_to_attach_is_an_error() -> None:
    attach = Attacher(fail={VENV_SSL.path})
    watcher = TlsWatcher(attach, lambda: [], scanner=FakeScanner([]), user=[VENV_SSL])
    with pytest.raises(TlsConfigError, match="uprobe refused"):
        watcher.start()


def test_user_library_is_attached_first_and_not_again() -> None:
    attach = Attacher()
    watcher = TlsWatcher(attach, lambda: [], scanner=FakeScanner([[VENV_SSL]]), user=[VENV_SSL])
    watcher.start()
    assert [p for p, _ in attach.calls] == [VENV_SSL.path, SYSTEM_SSL.path, SYSTEM_GNUTLS.path]


# --- per process -----------------------------------------------------------------------------------------------------


class MapsScanner:
    """libraries_of() per pid from a table the test edits; None once a pid's answer was handed out."""

    def __init__(self, maps: dict[int, list[TlsLibrary]]) -> None:
        self.maps = maps
        self.handed: set[int] = set()
        self.forgotten: list[int] = []

    def libraries_of(self, pid: int) -> list[TlsLibrary] | None:
        if pid in self.handed or pid not in self.maps:
            return None
        self.handed.add(pid)
        return [replace(lib, pid=pid) for lib in self.maps[pid]]

    def forget(self, pid: int) -> None:
        self.forgotten.append(pid)
        self.handed.discard(pid)

    def mark_known(self, libs: Iterable[TlsLibrary]) -> None:
        pass


def per_process_watcher(maps, live, kernel: Kernel, budget: int = 100, user=(), now_ns: int = 5_000_000):
    processes = ProcessProbes(kernel.attach, kernel.detach, kernel.report_exit, budget)
    scanner = MapsScanner(maps)
    watcher = TlsWatcher(kernel.attach, lambda: live, scanner=scanner, user=user, processes=processes,
                         clock_ns=lambda: now_ns)  # fmt: skip
    return watcher, scanner


def test_per_process_start_hooks_what_each_traced_process_maps_and_nothing_file_wide() -> None:
    kernel = Kernel()
    watcher, _ = per_process_watcher({3: [SYSTEM_SSL], 4: [SYSTEM_SSL, NODE], 9: [SYSTEM_GNUTLS]}, {3, 4}, kernel)
    watcher.start()
    assert kernel.file_wide == []
    assert kernel.per_process == [(SYSTEM_SSL.path, 3), (SYSTEM_SSL.path, 4), (NODE.path, 4)]
    assert watcher.stats.libraries_attached == 2  # two files, whatever the number of processes
    assert watcher.stats.probes_attached == 12


def test_programs_yet_to_start_get_the_system_libraries_file_wide_and_servers_their_own() -> None:
    kernel = Kernel()
    processes = ProcessProbes(kernel.attach, kernel.detach, kernel.report_exit, 100)
    watcher = TlsWatcher(kernel.attach, lambda: {3, 4}, scanner=MapsScanner({3: [SYSTEM_SSL], 4: [NODE]}),
                         processes=processes, system_file_wide=True)  # fmt: skip
    watcher.start()
    assert kernel.file_wide == [SYSTEM_SSL.path, SYSTEM_GNUTLS.path]
    # libssl is hooked for every process already; node's own copy still goes on node alone.
    assert kernel.per_process == [(NODE.path, 4)]
    assert watcher.stats.system_file_wide == 2


def test_a_fork_inherits_its_parent_libraries_at_once() -> None:
    kernel = Kernel()
    watcher, _ = per_process_watcher({3: [SYSTEM_SSL]}, {3}, kernel)
    watcher.start()
    watcher.on_task(TaskEvent(TASK_FORK, 8, 3, 2_000_000))
    assert kernel.per_process[-1] == (SYSTEM_SSL.path, 8)
    assert watcher.stats.after_fork.count == 1
    assert watcher.stats.after_fork.max_us == 3000  # 5 ms now - 2 ms at fork


def test_an_exec_or_a_mapping_hooks_what_the_process_maps_now() -> None:
    kernel = Kernel()
    maps = {3: []}
    watcher, scanner = per_process_watcher(maps, {3}, kernel)
    watcher.start()
    maps[3] = [NODE]
    scanner.forget(3)
    watcher.on_task(TaskEvent(TASK_EXEC, 3, 0, 1_000_000))
    assert kernel.per_process == [(NODE.path, 3)]
    assert (watcher.stats.after_exec.count, watcher.stats.after_exec.median_us) == (1, 4000)
    maps[3] = [NODE, VENV_SSL]
    scanner.forget(3)
    watcher.on_task(TaskEvent(TASK_MAP, 3, 0, 4_000_000))
    assert kernel.per_process == [(NODE.path, 3), (VENV_SSL.path, 3)]
    assert watcher.stats.after_map.count == 1
    watcher.on_task(TaskEvent(TASK_MAP, 3, 0, 4_500_000))  # nothing new: no delay recorded
    assert watcher.stats.after_map.count == 1


def test_an_exit_queues_the_probes_to_be_taken_down_later() -> None:
    kernel = Kernel()
    watcher, scanner = per_process_watcher({3: [SYSTEM_SSL]}, {3}, kernel)
    watcher.start()
    watcher.on_task(TaskEvent(TASK_EXIT, 3, 0, 1))
    assert kernel.detached == [] and 3 in scanner.forgotten
    assert watcher.reclaim_one()
    assert kernel.detached == [(SYSTEM_SSL.path, 3)]
    assert not watcher.reclaim_one()


def test_a_poll_forgets_processes_that_ended_unreported() -> None:
    kernel = Kernel()
    live = {3, 4}
    watcher, _ = per_process_watcher({3: [SYSTEM_SSL], 4: [SYSTEM_SSL]}, live, kernel)
    watcher.start()
    live.discard(4)
    watcher.poll()
    assert watcher.processes is not None and watcher.processes.pids() == {3}
    assert kernel.exits[4] is False


def test_past_the_budget_a_library_goes_file_wide_once() -> None:
    kernel = Kernel()
    watcher, _ = per_process_watcher({1: [SYSTEM_SSL], 2: [SYSTEM_SSL], 3: [SYSTEM_SSL]}, {1, 2, 3}, kernel, budget=8)
    watcher.start()
    assert kernel.per_process == [(SYSTEM_SSL.path, 1), (SYSTEM_SSL.path, 2)]
    assert kernel.file_wide == [SYSTEM_SSL.path]
    assert watcher.processes is not None
    assert watcher.processes.stats.libraries_over_cap == 1
    assert watcher.processes.pids() == set()  # the per-process probes on it are retired
    watcher.on_task(TaskEvent(TASK_FORK, 7, 1, 1))
    assert kernel.per_process == [(SYSTEM_SSL.path, 1), (SYSTEM_SSL.path, 2)]  # file-wide serves the child


def test_user_libraries_go_on_every_traced_process_once(tmp_path) -> None:
    lib = tmp_path / "libmine.so"
    lib.write_bytes(b"")
    mine = TlsLibrary("openssl", str(lib), (1, 99), ("SSL_read", "SSL_write"), "static")
    kernel = Kernel()
    watcher, _ = per_process_watcher({3: [], 4: []}, {3, 4}, kernel, user=[mine])
    watcher.start()
    watcher.poll()
    watcher.add_processes([5])
    assert kernel.per_process == [(str(lib), 3), (str(lib), 4), (str(lib), 5)]


def test_file_wide_exec_hooks_a_new_program_once() -> None:
    kernel = Kernel()
    scanner = MapsScanner({3: [NODE], 4: [NODE]})
    watcher = TlsWatcher(kernel.attach, lambda: [], scanner=scanner, clock_ns=lambda: 2_000_000)  # type: ignore[arg-type]
    scanner.scan = lambda pids: []  # type: ignore[attr-defined]
    scanner.mark_known = lambda libs: None  # type: ignore[attr-defined]
    watcher.start()
    watcher.on_task(TaskEvent(TASK_EXEC, 3, 0, 1_000_000))
    watcher.on_task(TaskEvent(TASK_EXEC, 4, 0, 1_000_000))
    watcher.on_task(TaskEvent(TASK_FORK, 5, 4, 1_000_000))  # nothing to do file-wide
    assert kernel.file_wide == [SYSTEM_SSL.path, SYSTEM_GNUTLS.path, NODE.path]
    assert kernel.per_process == []
    assert watcher.stats.after_exec.count == 1


def test_a_zombie_or_gone_process_is_not_running_so_its_failed_attach_is_no_fault():
    import subprocess

    from otelbpf.tls_watch import _running

    child = subprocess.Popen(["true"])
    for _ in range(100):  # not reaped yet: a zombie until wait()
        if not _running(child.pid):
            break
        time.sleep(0.01)
    assert not _running(child.pid)
    child.wait()
    assert not _running(child.pid)
    assert _running(os.getpid())
