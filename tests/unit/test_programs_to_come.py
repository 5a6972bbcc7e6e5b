"""Which parts of a selection do their TLS in programs not started yet (runner.programs_to_come)."""

import os

import psutil

from otelbpf.runner import programs_to_come
from otelbpf.targets import TargetSpec, exes_not_running
from otelbpf.tls_libraries import TlsLibrary

LIBSSL = TlsLibrary("openssl", "/lib/libssl.so.3", (1, 2), ("SSL_read", "SSL_write"), "shared")


class FakeScanner:
    """libraries_of as the real scanner answers it: a list, empty for none, None when unreadable."""

    def __init__(self, by_pid: dict[int, list[TlsLibrary] | None]) -> None:
        self.by_pid = by_pid

    def libraries_of(self, pid: int) -> list[TlsLibrary] | None:
        return self.by_pid.get(pid)


def test_a_pid_that_maps_no_tls_library_is_a_launcher():
    spec = TargetSpec(pids=[10, 11, 12])
    scanner = FakeScanner({10: [], 11: [LIBSSL], 12: None})
    # 11 does its own TLS (a server); 12 could not be read, so nothing is assumed about it.
    assert programs_to_come(spec, scanner) == ["pid 10"]


def test_an_exe_nothing_runs_yet_is_to_come_and_a_running_one_is_not():
    me = psutil.Process(os.getpid()).name()
    missing = "otelbpf-no-such-program"
    assert exes_not_running([me, missing]) == [missing]
    spec = TargetSpec(exes=[me, missing])
    assert programs_to_come(spec, FakeScanner({})) == [f"exe {missing}"]


def test_tracing_everything_or_only_servers_leaves_nothing_to_come():
    assert programs_to_come(TargetSpec(), FakeScanner({})) == []
    assert programs_to_come(TargetSpec(pids=[5]), FakeScanner({5: [LIBSSL]})) == []
