"""Loading and detaching the kernel programs on several threads: order kept, failures reported or survived."""

from __future__ import annotations

import threading
import time

import pytest

from otelbpf.probes import detach_in_parallel, load_in_parallel


class FakeFunction:
    def __init__(self, fd: int) -> None:
        self.fd = fd


class FakeBpf:
    """bcc.BPF's load and detach calls, each taking a little while and noting which thread ran it."""

    def __init__(self, fail: bytes | None = None) -> None:
        self.fail = fail
        self.threads: set[int] = set()
        self.lock = threading.Lock()
        self.tracepoint_fds = {b"a:one": 1, b"a:two": 2, b"b:three": 3}
        self.uprobe_fds = {b"p_libssl_SSL_read": 4, b"r_libssl_SSL_read": 5}
        self.detached: list[bytes] = []

    def _busy(self, name: bytes) -> None:
        with self.lock:
            self.threads.add(threading.get_ident())
        time.sleep(0.02)  # long enough for the other threads to take work meanwhile
        if name == self.fail:
            raise RuntimeError(f"Failed to load BPF program {name!r}")

    def load_func(self, name: bytes, kind: int) -> FakeFunction:
        self._busy(name)
        return FakeFunction(1000 * kind + int(name.decode().rsplit("_", 1)[1]))

    def detach_tracepoint(self, tp: bytes) -> None:
        self._busy(tp)
        with self.lock:
            self.detached.append(tp)
        del self.tracepoint_fds[tp]

    def detach_uprobe_event(self, ev: bytes) -> None:
        self._busy(ev)
        with self.lock:
            self.detached.append(ev)
        del self.uprobe_fds[ev]


def test_loads_keep_the_order_asked_for() -> None:
    bpf = FakeBpf()
    loads = [(f"prog_{i}".encode(), i % 2) for i in range(12)]
    assert load_in_parallel(bpf, loads) == [1000 * (i % 2) + i for i in range(12)]
    assert len(bpf.threads) > 1


def test_a_failed_load_is_raised() -> None:
    bpf = FakeBpf(fail=b"prog_5")
    with pytest.raises(RuntimeError, match="prog_5"):
        load_in_parallel(bpf, [(f"prog_{i}".encode(), 0) for i in range(8)])


def test_one_load_needs_no_thread() -> None:
    bpf = FakeBpf()
    assert load_in_parallel(bpf, [(b"prog_7", 1)]) == [1007]
    assert bpf.threads == {threading.get_ident()}


def test_every_probe_is_detached() -> None:
    bpf = FakeBpf()
    detach_in_parallel(bpf)
    assert sorted(bpf.detached) == sorted([b"a:one", b"a:two", b"b:three", b"p_libssl_SSL_read", b"r_libssl_SSL_read"])
    assert bpf.tracepoint_fds == {} and bpf.uprobe_fds == {}
    assert len(bpf.threads) > 1


def test_a_failed_detach_leaves_the_others_detached_and_itself_for_cleanup() -> None:
    bpf = FakeBpf(fail=b"a:two")
    detach_in_parallel(bpf)  # logged, not raised: bcc's cleanup() tries it again
    assert sorted(bpf.detached) == sorted([b"a:one", b"b:three", b"p_libssl_SSL_read", b"r_libssl_SSL_read"])
    assert bpf.tracepoint_fds == {b"a:two": 2}
