"""ProcessProbes: per-process TLS probes, their budget, and their removal once a process ends."""

from __future__ import annotations

import pytest

from otelbpf.tls_libraries import TlsLibrary
from otelbpf.tls_processes import ProcessProbes, path_for
from tests.unit.tls_fakes import FakeTlsKernel as Kernel

SSL = TlsLibrary("openssl", "/usr/lib/libssl.so.3", (1, 10), ("SSL_read", "SSL_write"), "shared", addresses=(16, 32))
GNUTLS = TlsLibrary("gnutls", "/usr/lib/libgnutls.so.30", (1, 11), ("gnutls_record_recv",), "shared")


def probes(kernel: Kernel, budget: int = 100) -> ProcessProbes:
    return ProcessProbes(kernel.attach, kernel.detach, kernel.report_exit, budget)


def test_attach_once_per_process_and_library_by_address() -> None:
    kernel = Kernel()
    pp = probes(kernel)
    assert pp.attach(SSL, 5) == 4
    assert pp.attach(SSL, 5) == 0  # already there
    assert pp.attach(SSL, 6) == 4
    assert kernel.attached == [(SSL.path, 5, (16, 32)), (SSL.path, 6, (16, 32))]
    assert kernel.exits == {5: True, 6: True}  # the kernel is asked to report their end
    assert pp.has(5, SSL.file_id) and pp.libraries(6) == [SSL]
    assert pp.live_probes == 8 and pp.stats.processes_hooked == 2


def test_an_ended_process_is_taken_down_one_library_at_a_time() -> None:
    kernel = Kernel()
    pp = probes(kernel)
    pp.attach(SSL, 5)
    pp.attach(GNUTLS, 5)
    pp.forget(5)
    assert kernel.exits[5] is False and pp.pids() == set()
    assert (pp.live_probes, pp.ended_probes) == (0, 6)
    assert kernel.detached == []  # nothing slow happens until asked
    assert pp.reclaim_one() and kernel.detached == [(SSL.path, 5)]
    assert pp.reclaim_one() and kernel.detached == [(SSL.path, 5), (GNUTLS.path, 5)]
    assert not pp.reclaim_one()
    assert pp.ended_probes == 0 and pp.stats.probes_detached == 8
    assert pp.stats.peak_open == 6


def test_the_budget_refuses_rather_than_attaching() -> None:
    kernel = Kernel()
    pp = probes(kernel, budget=10)
    assert pp.attach(SSL, 1) == 4
    assert pp.attach(SSL, 2) == 4
    assert pp.attach(SSL, 3) is None  # 12 > 10
    assert len(kernel.attached) == 2
    pp.forget(1)  # ended probes do not count against the budget of live ones
    assert pp.attach(SSL, 3) == 4


def test_dropping_a_library_retires_it_everywhere() -> None:
    kernel = Kernel()
    pp = probes(kernel)
    pp.attach(SSL, 1)
    pp.attach(GNUTLS, 1)
    pp.attach(SSL, 2)
    pp.drop_library(SSL.file_id)
    assert pp.libraries(1) == [GNUTLS]
    assert pp.pids() == {1}
    assert kernel.exits[2] is False  # nothing left to take down for it
    assert pp.ended_probes == 8


def test_ended_probes_piling_up_beyond_the_budget_are_urgent() -> None:
    pp = probes(Kernel(), budget=8)
    for pid in range(17):
        assert pp.attach(SSL, pid) == 4
        pp.forget(pid)
        assert pp.reclaim_urgent() is (pp.ended_probes > 64)  # never below 64: removals are slow
    assert pp.reclaim_urgent()


def test_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="0 or more"):
        probes(Kernel(), budget=-1)


def test_path_for_follows_the_process_namespace() -> None:
    lib = TlsLibrary("openssl", "/proc/77/root/usr/lib/libssl.so.3", (1, 2), ("SSL_read",), "shared", pid=77)
    assert path_for(lib, 90) == "/proc/90/root/usr/lib/libssl.so.3"
    assert path_for(SSL, 90) == SSL.path


def test_path_for_carries_map_files_over_to_a_forked_child() -> None:
    lib = TlsLibrary("openssl", "/proc/77/map_files/7f00-7f80", (1, 2), ("SSL_read",), "shared", pid=77)
    assert path_for(lib, 90) == "/proc/90/map_files/7f00-7f80"
