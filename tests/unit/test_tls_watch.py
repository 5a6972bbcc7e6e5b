"""TlsWatcher: which library files get attached, once each, and what a failure costs."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from otelbpf import tls_watch
from otelbpf.tls_libraries import TlsLibrary
from otelbpf.tls_watch import TlsConfigError, TlsWatcher, user_libraries

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
