"""Keeps TLS libraries hooked: the system's at start, then every new file a traced process maps.

A uprobe belongs to a file (inode), not a process, so each library file is attached once and
serves every process that maps it, including processes started later. What needs watching is a
traced process mapping a file that was never attached: a venv's or wheel's own libssl, a
statically linked binary such as node, or a library loaded late with dlopen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from otelbpf.tls_libraries import LibraryScanner, TlsLibrary, classify, system_libraries

logger = logging.getLogger(__name__)

# attach(path, kind, symbols) -> probes attached; raises on failure (KernelProbes.attach_tls).
AttachFn = Callable[[str, str, tuple[str, ...]], int]


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
class TlsWatchStats:
    """What the watcher did, for the end-of-run summary."""

    libraries_attached: int = 0
    probes_attached: int = 0
    attach_failures: int = 0


class TlsWatcher:
    """Attaches TLS probes to library files as traced processes come to map them."""

    def __init__(
        self,
        attach: AttachFn,
        pids: Callable[[], Iterable[int]],
        scanner: LibraryScanner | None = None,
        user: Iterable[TlsLibrary] = (),
    ) -> None:
        self._attach = attach
        self._pids = pids
        self._scanner = scanner or LibraryScanner()
        self._user = list(user)
        self._attached: set[tuple[int, int]] = set()
        self.stats = TlsWatchStats()

    def start(self) -> None:
        """Hook the user's libraries, the system's, and those mapped by traced processes now.

        The system's libssl and libgnutls are hooked even when no traced process maps them yet:
        a process that loads them later (a short-lived client) is then covered from its first call.
        """
        for lib in self._user:
            self._hook(lib, required=True)
        libs = system_libraries()
        for lib in libs:
            self._hook(lib)
        self._scanner.mark_known(libs)
        self.poll()

    def poll(self) -> None:
        """Scan traced processes for library files not hooked yet, and hook them."""
        for lib in self._scanner.scan(self._pids()):
            self._hook(lib)

    def _hook(self, lib: TlsLibrary, required: bool = False) -> None:
        if lib.file_id in self._attached:
            return
        try:
            n = self._attach(lib.path, lib.kind, lib.symbols)
        except Exception as exc:  # one bad file must not stop the others, nor the run
            if required:
                raise TlsConfigError(str(exc)) from exc
            self.stats.attach_failures += 1
            logger.warning("TLS: could not attach to %s: %s", lib.path, exc)
            return
        self._attached.add(lib.file_id)
        self.stats.libraries_attached += 1
        self.stats.probes_attached += n
        seen_in = f" (mapped by pid {lib.pid})" if lib.pid else ""
        logger.info("TLS: attached %s (%s) %s: %d probes%s", lib.kind, lib.linked, lib.path, n, seen_in)
