"""Find the files that contain a hookable TLS library: the system's libssl/libgnutls and those mapped by processes.

A uprobe is attached to a file (an inode), not to a process, so one attach per file serves every process that maps
it, including processes started later. This module therefore reports files, each once, identified by (dev, inode).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from otelbpf.elf import ElfError, exported_function_addresses, imported_functions
from otelbpf.mappings import linker_cache, mapped_files, openable_path

logger = logging.getLogger(__name__)

OPENSSL = "openssl"
GNUTLS = "gnutls"

# kind -> (required symbols, optional symbols); OpenSSL first: it wins when a file exports both APIs.
HOOKABLE: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    OPENSSL: (("SSL_read", "SSL_write"), ("SSL_read_ex", "SSL_write_ex")),
    GNUTLS: (("gnutls_record_recv", "gnutls_record_send"), ()),
}
_ALL_SYMBOLS = frozenset(name for required, optional in HOOKABLE.values() for name in (*required, *optional))

# A library file named like this is the shared TLS library itself; anything else exporting the API embeds it.
_SHARED_NAME = re.compile(r"^lib(ssl|gnutls)[^/]*\.so(\.|$)")
_FALLBACK_GLOBS = tuple(
    f"{root}/{name}"
    for root in ("/usr/lib/*", "/lib/*", "/usr/lib64", "/lib64", "/usr/lib", "/lib", "/usr/local/lib*")
    for name in ("libssl.so.*", "libgnutls.so.*")
)


@dataclass(frozen=True)
class TlsLibrary:
    """One file to attach TLS uprobes to."""

    kind: str  # OPENSSL or GNUTLS
    # Openable from otelbpf's mount namespace: the plain path if it is the same file, else /proc/PID/root/..., else
    # /proc/PID/map_files/START-END when the path the process's maps show leads nowhere (see _resolve).
    path: str
    file_id: tuple[int, int]  # (st_dev, st_ino): one attach per file
    symbols: tuple[str, ...]  # hookable symbols the file exports, in HOOKABLE order
    linked: str  # "shared" (libssl/libgnutls itself) or "static" (an object embedding the library, e.g. node)
    pid: int | None = None  # the process it was first seen in (None for system libraries)
    # Each symbol's st_value, in the order of symbols, so probes go in without a symbol lookup. Derived from
    # the file, so not part of a library's identity.
    addresses: tuple[int, ...] = field(default=(), compare=False)
    mapped_as: str = field(default="", compare=False)  # the path the process's maps show, for messages

    @property
    def label(self) -> str:
        """The file's name for messages: what the process maps, else the path attached."""
        return self.mapped_as or self.path


@dataclass
class ScanStats:
    """Counters of LibraryScanner work since it was created."""

    files_inspected: int = 0
    pids_scanned: int = 0
    pids_unreadable: int = 0
    inspect_errors: int = 0


def _inspect(path: str, name: str = "") -> TlsLibrary | None:
    """classify() that lets OSError and ElfError through, so the scanner can tell failures from verdicts.

    name: the file's own name, when path does not end in it (a /proc/PID/map_files path).
    """
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        return None
    exported = exported_function_addresses(path, _ALL_SYMBOLS)
    for kind, (required, optional) in HOOKABLE.items():
        if not all(name in exported for name in required):
            continue
        # A compatibility layer (libgnutls-openssl exports SSL_read over gnutls_record_recv) does its I/O through
        # another hooked library: hooking it too would report every read twice, and its SSL* is not OpenSSL's.
        others = {name for other, (req, _) in HOOKABLE.items() if other != kind for name in req}
        if imported_functions(path, others):
            logger.debug("%s: exports the %s API over another TLS library; not hooked", path, kind)
            continue
        symbols = required + tuple(name for name in optional if name in exported)
        linked = "shared" if _SHARED_NAME.match(os.path.basename(name or path)) else "static"
        addresses = tuple(exported[name] for name in symbols)
        return TlsLibrary(kind, path, (st.st_dev, st.st_ino), symbols, linked, addresses=addresses)
    return None


def classify(path: str) -> TlsLibrary | None:
    """The TlsLibrary in the file at path, or None if it exports no complete required set or cannot be read."""
    try:
        return _inspect(path)
    except (OSError, ElfError) as exc:
        logger.debug("cannot inspect %s: %s", path, exc)
        return None


def is_candidate(path: str) -> bool:
    """Whether a mapped file's name suggests a TLS library (libssl, libgnutls, Python's _ssl module, ...)."""
    name = os.path.basename(path).lower()
    return "ssl" in name or "tls" in name


def _ldconfig_paths() -> list[str]:
    return [path for name, path in linker_cache() if is_candidate(name)]


def system_libraries() -> list[TlsLibrary]:
    """The distribution's libssl and libgnutls, so processes loading them later are covered from the start."""
    paths = _ldconfig_paths()
    if not paths:
        # No ldconfig or an empty cache (e.g. musl-based images): look in the usual places.
        paths = sorted({p for pattern in _FALLBACK_GLOBS for p in glob.glob(pattern)})
    found: dict[tuple[int, int], TlsLibrary] = {}
    for path in paths:
        # The real file, not the soname link: the name /proc/PID/maps will show for it.
        lib = classify(os.path.realpath(path))
        if lib is not None and lib.file_id not in found:
            found[lib.file_id] = lib
    return list(found.values())


class LibraryScanner:
    """Finds TLS libraries mapped by processes, each file reported once."""

    def __init__(self, max_cached_files: int = 8192) -> None:
        self.stats = ScanStats()
        self._max_cached_files = max_cached_files
        # Verdict (library or None) per mapped (dev, inode) as /proc/PID/maps shows it, so a file is parsed once
        # however many processes map it. Bounded: when full it is cleared, costing one re-parse per file, rather
        # than growing with every short-lived binary a busy host ever runs.
        self._verdicts: dict[tuple[int, int], TlsLibrary | None] = {}
        # file_ids (from stat, which can differ from the maps dev on btrfs/overlayfs) already reported or known.
        # Not bounded by the cache: forgetting one would attach twice; it grows only with TLS libraries found.
        self._reported: set[tuple[int, int]] = set()
        # hash of each pid's maps text at its last complete scan: unchanged maps need no parsing at all.
        self._maps_hash: dict[int, int] = {}
        # The same for libraries_of(), per process; entries go with forget().
        self._pid_maps: dict[int, int] = {}

    def mark_known(self, libs: Iterable[TlsLibrary]) -> None:
        """Never report these files (e.g. system libraries already attached)."""
        self._reported.update(lib.file_id for lib in libs)

    def scan(self, pids: Iterable[int]) -> list[TlsLibrary]:
        """TLS libraries mapped by pids that were not reported before; unreadable or vanished pids are skipped."""
        new: list[TlsLibrary] = []
        hashes: dict[int, int] = {}
        for pid in pids:
            try:
                with open(f"/proc/{pid}/maps") as f:
                    text = f.read()
            except OSError:
                self.stats.pids_unreadable += 1
                continue
            self.stats.pids_scanned += 1
            digest = hash(text)
            if self._maps_hash.get(pid) == digest:
                hashes[pid] = digest
                continue
            libs, complete = self._libraries_in(pid, text)
            for lib in libs:
                if lib.file_id not in self._reported:
                    self._reported.add(lib.file_id)
                    new.append(replace(lib, pid=pid))
            if complete:
                hashes[pid] = digest
        # Only pids of this scan are kept, so the table tracks the live targets instead of every pid ever seen.
        self._maps_hash = hashes
        return new

    def libraries_of(self, pid: int) -> list[TlsLibrary] | None:
        """Every TLS library pid maps now, or None when its maps are unchanged since the last call for it
        (or unreadable: the process is gone). Per process, unlike scan(): probes can be per process."""
        try:
            with open(f"/proc/{pid}/maps") as f:
                text = f.read()
        except OSError:
            self.stats.pids_unreadable += 1
            self._pid_maps.pop(pid, None)
            return None
        self.stats.pids_scanned += 1
        digest = hash(text)
        if self._pid_maps.get(pid) == digest:
            return None
        libs, complete = self._libraries_in(pid, text)
        if complete:
            self._pid_maps[pid] = digest
        return [replace(lib, pid=pid) for lib in libs]

    def forget(self, pid: int) -> None:
        """Drop what libraries_of() remembers of pid (it exited, or its pid may be reused)."""
        self._pid_maps.pop(pid, None)

    def _libraries_in(self, pid: int, text: str) -> tuple[list[TlsLibrary], bool]:
        """The TLS libraries among pid's candidate files, and False if some file could not be inspected."""
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = None  # kernel threads have none; a vanished pid fails below too
        found: list[TlsLibrary] = []
        complete = True
        for mapped in mapped_files(text):
            if mapped.path != exe and not is_candidate(mapped.path):
                continue
            key = (mapped.dev, mapped.inode)
            cached = key in self._verdicts
            if cached and self._verdicts[key] is None:
                continue
            try:
                # Per process even for a known file: another process's path to it lasts only as long as that one.
                where = openable_path(pid, mapped)
                lib = self._verdicts[key] if cached else _inspect(where, mapped.path)
            except ElfError as exc:
                logger.debug("pid %d: %s", pid, exc)
                lib = None
            except OSError as exc:
                # Often the pid exiting mid-scan; not cached, so another process mapping the file retries it.
                logger.debug("pid %d: cannot inspect %s: %s", pid, mapped.path, exc)
                self.stats.inspect_errors += 1
                complete = False
                continue
            if not cached:
                self.stats.files_inspected += 1
                if len(self._verdicts) >= self._max_cached_files:
                    self._verdicts.clear()
                self._verdicts[key] = lib
            if lib is not None:
                if all(lib.file_id != other.file_id for other in found):
                    found.append(replace(lib, path=where, mapped_as=mapped.path))
        return found, complete
