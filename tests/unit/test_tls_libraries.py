"""Finding TLS library files: maps parsing, classification of gcc-built fakes and real libraries, process scans."""

from __future__ import annotations

import os
import shutil
import ssl  # noqa: F401  # loads libssl.so.3 into this process, for the self-scan test
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from otelbpf import tls_libraries
from otelbpf.mappings import Mapping, mapped_files, openable_path
from otelbpf.tls_libraries import (
    GNUTLS,
    OPENSSL,
    LibraryScanner,
    TlsLibrary,
    classify,
    is_candidate,
    system_libraries,
)

SYSTEM_LIB_DIR = Path("/usr/lib/x86_64-linux-gnu")
LIBSSL = SYSTEM_LIB_DIR / "libssl.so.3"
LIBGNUTLS = SYSTEM_LIB_DIR / "libgnutls.so.30"
NSS_LIBSSL = SYSTEM_LIB_DIR / "libssl3.so"  # Mozilla NSS: SSL_* functions, but no SSL_read/SSL_write
GNUTLS_OPENSSL = SYSTEM_LIB_DIR / "libgnutls-openssl.so.27"  # GnuTLS's OpenSSL compatibility layer
NO_SUCH_PID = 2**22 + 1  # above the largest pid_max Linux allows

MAPS = """\
55d4c0a00000-55d4c0a28000 r--p 00000000 fd:01 1835017                    /usr/bin/python3.11
55d4c0a28000-55d4c0d1f000 r-xp 00028000 fd:01 1835017                    /usr/bin/python3.11
55d4c0d1f000-55d4c0f6c000 r--p 0031f000 fd:01 1835017                    /usr/bin/python3.11
55d4c1a3e000-55d4c1b9a000 rw-p 00000000 00:00 0                          [heap]
7f2a1c000000-7f2a1c021000 rw-p 00000000 00:00 0
7f2a1d1c0000-7f2a1d1e2000 r--p 00000000 fd:01 1840211                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f2a1d1e2000-7f2a1d23f000 r-xp 00022000 fd:01 1840211                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7f2a1d2e0000-7f2a1d2f0000 r-xp 00010000 103:0a 77                         /opt/my app/lib/libssl-8bd2ce0f.so.3
7f2a1d300000-7f2a1d310000 r-xp 00000000 fd:01 1840999                    /usr/lib/x86_64-linux-gnu/libold.so (deleted)
7f2a1d310000-7f2a1d320000 r-xp 00000000 00:05 0                          /memfd:jit (deleted)
7f2a1d320000-7f2a1d330000 r-xp 00000000 00:00 0                          /dev/zero
7f2a1d400000-7f2a1d422000 r--p 00000000 fd:01 1840212                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f2a1d422000-7f2a1d5a0000 r-xp 00022000 fd:01 1840212                    /usr/lib/x86_64-linux-gnu/libc.so.6
7f2a1d5ff000-7f2a1d600000 rwxp 00000000 00:00 0                          [anon:jit]
7f2a1d700000-7f2a1d710000 r-xp 00000000 fd:01 1840211                    /usr/lib/x86_64-linux-gnu/libssl.so.3
7ffc3b1e5000-7ffc3b206000 rw-p 00000000 00:00 0                          [stack]
7ffc3b3c0000-7ffc3b3c2000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
"""


def tls_source(*names: str) -> str:
    """C source of a fake library defining these functions (with SSL_read's shape, which is enough here)."""
    return "".join(f"int {name}(void *s, void *b, int n) {{ (void)s; (void)b; return n; }}\n" for name in names)


def gcc(directory: Path, name: str, source: str, *flags: str) -> Path:
    """Compile source into directory/name."""
    # The fakes are the point of these tests: without gcc they cannot run, which must fail, not skip.
    assert shutil.which("gcc") is not None, "gcc not installed (make setup installs it)"
    directory.mkdir(parents=True, exist_ok=True)
    src = directory / f"{name}.c"
    src.write_text(source)
    out = directory / name
    subprocess.run(["gcc", "-Wall", "-Werror", *flags, "-o", str(out), str(src)], check=True, capture_output=True)
    return out


def shared(directory: Path, name: str, source: str) -> Path:
    return gcc(directory, name, source, "-shared", "-fPIC")


def file_id(path: Path | str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


@pytest.fixture
def process() -> Iterator[Callable[..., subprocess.Popen]]:
    """Start processes that stay alive until the test ends, each once it has printed "ok"."""
    started: list[subprocess.Popen] = []

    def start(*argv: str | Path) -> subprocess.Popen:
        proc = subprocess.Popen([str(a) for a in argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline() == "ok\n"
        return proc

    yield start
    for proc in started:
        proc.stdin.close()  # each waits on stdin and exits at EOF
        proc.wait(timeout=10)


def python_loading(*libraries: Path) -> list[str]:
    """A python command that dlopens libraries, says ok and waits, like a program with its own bundled libssl."""
    code = "import ctypes, sys\nfor p in sys.argv[1:]: ctypes.CDLL(p)\nprint('ok', flush=True)\nsys.stdin.read()\n"
    return [sys.executable, "-c", code, *map(str, libraries)]


# --- mapped_files ---------------------------------------------------------------------------------------------------


def test_mapped_files_keeps_distinct_executable_file_mappings() -> None:
    assert mapped_files(MAPS) == [
        ("/usr/bin/python3.11", os.makedev(0xFD, 0x01), 1835017, "55d4c0a28000-55d4c0d1f000"),
        ("/usr/lib/x86_64-linux-gnu/libssl.so.3", os.makedev(0xFD, 0x01), 1840211, "7f2a1d1e2000-7f2a1d23f000"),
        ("/opt/my app/lib/libssl-8bd2ce0f.so.3", os.makedev(0x103, 0x0A), 77, "7f2a1d2e0000-7f2a1d2f0000"),
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", os.makedev(0xFD, 0x01), 1840212, "7f2a1d422000-7f2a1d5a0000"),
    ]


def test_mapped_files_names_spans_as_map_files_does() -> None:
    # maps pads addresses to 8 digits; map_files does not (a non-PIE executable maps low).
    (low,) = mapped_files("00400000-0041e000 r-xp 00000000 fd:01 12 /usr/local/bin/app\n")
    assert low.span == "400000-41e000"


def test_mapped_files_of_empty_or_odd_text() -> None:
    assert mapped_files("") == []
    assert mapped_files("garbage\n\n7f00-7f01 r-xp 0 zz:01 5 /x/libssl.so\n") == []


# --- is_candidate ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "candidate"),
    [
        ("/usr/lib/x86_64-linux-gnu/libssl.so.3", True),
        ("/venv/lib/python3.11/site-packages/psycopg2_binary.libs/libssl-8bd2ce0f.so.3", True),
        ("/usr/lib/x86_64-linux-gnu/libgnutls.so.30.34.3", True),
        ("/usr/lib/python3.11/lib-dynload/_ssl.cpython-311-x86_64-linux-gnu.so", True),
        ("/opt/app/LIBSSL.SO", True),
        ("/usr/lib/x86_64-linux-gnu/libcrypto.so.3", False),
        ("/usr/lib/x86_64-linux-gnu/libc.so.6", False),
        ("/usr/bin/node", False),  # the executable is inspected anyway, by the scanner
        ("/opt/ssl/lib/libfoo.so", False),  # only the file name counts
    ],
)
def test_is_candidate(path: str, candidate: bool) -> None:
    assert is_candidate(path) is candidate


# --- classify -------------------------------------------------------------------------------------------------------


def test_classify_shared_openssl(tmp_path: Path) -> None:
    # Defined in reverse: symbols come out in HOOKABLE order, required first.
    path = shared(tmp_path, "libssl.so.3", tls_source("SSL_write_ex", "SSL_write", "SSL_read_ex", "SSL_read"))
    assert classify(str(path)) == TlsLibrary(
        kind=OPENSSL,
        path=str(path),
        file_id=file_id(path),
        symbols=("SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"),
        linked="shared",
    )


def test_classify_bundled_libssl_without_ex_functions(tmp_path: Path) -> None:
    path = shared(tmp_path, "libssl-8bd2ce0f.so.1.1", tls_source("SSL_read", "SSL_write"))
    lib = classify(str(path))
    assert lib is not None
    assert (lib.kind, lib.symbols, lib.linked) == (OPENSSL, ("SSL_read", "SSL_write"), "shared")


def test_classify_executable_with_openssl_inside(tmp_path: Path) -> None:
    path = gcc(tmp_path, "server", tls_source("SSL_read", "SSL_write") + "int main(void) { return 0; }\n", "-rdynamic")
    lib = classify(str(path))
    assert lib is not None
    assert (lib.kind, lib.linked, lib.pid) == (OPENSSL, "static", None)


def test_classify_python_ssl_module_with_static_openssl(tmp_path: Path) -> None:
    path = shared(tmp_path, "_ssl.cpython-311-x86_64-linux-gnu.so", tls_source("SSL_read", "SSL_write"))
    assert classify(str(path)).linked == "static"


def test_classify_incomplete_api_is_none(tmp_path: Path) -> None:
    assert classify(str(shared(tmp_path, "libssl.so.3", tls_source("SSL_read", "SSL_read_ex")))) is None


def test_classify_gnutls(tmp_path: Path) -> None:
    path = shared(tmp_path, "libgnutls.so.30", tls_source("gnutls_record_send", "gnutls_record_recv", "gnutls_init"))
    lib = classify(str(path))
    assert lib is not None
    assert (lib.kind, lib.symbols, lib.linked) == (GNUTLS, ("gnutls_record_recv", "gnutls_record_send"), "shared")


def test_classify_prefers_openssl_when_both_are_exported(tmp_path: Path) -> None:
    names = ("gnutls_record_recv", "gnutls_record_send", "SSL_read", "SSL_write")
    assert classify(str(shared(tmp_path, "libtls.so", tls_source(*names)))).kind == OPENSSL


def test_classify_skips_an_openssl_api_built_on_gnutls(tmp_path: Path) -> None:
    # Like libgnutls-openssl: its SSL_read calls gnutls_record_recv, which is hooked in libgnutls already.
    source = tls_source("SSL_read", "SSL_write") + "extern int gnutls_record_recv(void *, void *, int);\n"
    source += "int pending(void) { return gnutls_record_recv(0, 0, 0); }\n"
    assert classify(str(shared(tmp_path, "libcompat-ssl.so", source))) is None


def test_classify_unreadable_or_foreign_files_is_none(tmp_path: Path) -> None:
    text = tmp_path / "libssl.so.3"
    text.write_text("INPUT(-lssl)\n")  # a linker script, as some distributions install
    assert classify(str(text)) is None
    assert classify(str(tmp_path / "missing.so")) is None
    assert classify(str(tmp_path)) is None
    assert classify("/dev/null") is None


def test_classify_real_libraries() -> None:
    lib = classify(str(LIBSSL))
    assert lib is not None
    assert (lib.kind, lib.symbols, lib.linked) == (
        OPENSSL,
        ("SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"),
        "shared",
    )
    assert classify(str(LIBGNUTLS)).kind == GNUTLS
    # NSS's libssl3.so exports 100 SSL_* functions, but not SSL_read or SSL_write (NSS does I/O through NSPR).
    assert classify(str(NSS_LIBSSL)) is None
    # libgnutls-openssl.so.27 exports SSL_read and SSL_write, but over gnutls_record_recv/send in libgnutls.
    assert classify(str(GNUTLS_OPENSSL)) is None


# --- LibraryScanner -------------------------------------------------------------------------------------------------


def test_scan_own_process_finds_libssl() -> None:
    scanner = LibraryScanner()
    found = scanner.scan([os.getpid()])
    libssl = [lib for lib in found if lib.file_id == file_id(LIBSSL)]
    assert len(libssl) == 1
    assert (libssl[0].kind, libssl[0].pid, libssl[0].linked) == (OPENSSL, os.getpid(), "shared")
    assert libssl[0].path == str(LIBSSL)  # same mount namespace: the plain path
    assert scanner.scan([os.getpid()]) == []
    assert scanner.stats.pids_scanned == 2


def test_scan_process_that_imported_ssl(process) -> None:
    proc = process(sys.executable, "-c", "import ssl, sys; print('ok', flush=True); sys.stdin.read()")
    scanner = LibraryScanner()
    found = scanner.scan([proc.pid])
    assert [(lib.file_id, lib.kind, lib.pid) for lib in found] == [(file_id(LIBSSL), OPENSSL, proc.pid)]
    inspected = scanner.stats.files_inspected
    assert scanner.scan([proc.pid]) == []
    assert scanner.stats.files_inspected == inspected  # maps unchanged: nothing inspected again


def test_scan_finds_openssl_inside_the_executable(tmp_path: Path, process) -> None:
    source = tls_source("SSL_read", "SSL_write") + (
        "#include <stdio.h>\n"
        'int main(void) { puts("ok"); fflush(stdout); return getchar() == EOF ? 0 : SSL_read(0, 0, 0); }\n'
    )
    exe = gcc(tmp_path, "server", source, "-rdynamic")
    proc = process(exe)
    found = LibraryScanner().scan([proc.pid])
    assert found == [TlsLibrary(OPENSSL, str(exe), file_id(exe), ("SSL_read", "SSL_write"), "static", proc.pid)]


def test_scan_reports_each_of_many_files_once(tmp_path: Path, process) -> None:
    # 7 distinct library files, loaded by 3 processes that overlap: each file comes out exactly once.
    libs = [
        shared(tmp_path / f"wheel{i}", f"libssl-{i:08x}.so.3", tls_source("SSL_read", "SSL_write")) for i in range(7)
    ]
    pids = [process(*python_loading(*libs[:4])).pid, process(*python_loading(*libs[2:])).pid]
    pids.append(process(*python_loading(*libs)).pid)
    scanner = LibraryScanner()
    found = scanner.scan(pids)
    assert sorted(lib.path for lib in found) == sorted(map(str, libs))
    assert len({lib.file_id for lib in found}) == 7
    assert {lib.pid for lib in found} == set(pids[:2])
    assert scanner.scan(pids) == []
    assert scanner.stats.pids_scanned == 6


def test_scan_skips_known_libraries(process) -> None:
    proc = process(sys.executable, "-c", "import ssl, sys; print('ok', flush=True); sys.stdin.read()")
    scanner = LibraryScanner()
    scanner.mark_known(system_libraries())
    assert scanner.scan([proc.pid]) == []


def test_scan_skips_and_counts_missing_pids() -> None:
    scanner = LibraryScanner()
    assert scanner.scan([NO_SUCH_PID]) == []
    assert (scanner.stats.pids_unreadable, scanner.stats.pids_scanned) == (1, 0)


def test_scan_cache_stays_bounded(tmp_path: Path, process) -> None:
    libs = [shared(tmp_path / f"d{i}", f"libssl.so.{i}", tls_source("SSL_read", "SSL_write")) for i in range(5)]
    scanner = LibraryScanner(max_cached_files=2)
    assert len(scanner.scan([process(*python_loading(*libs)).pid])) == 5
    assert len(scanner._verdicts) <= 2  # bounded memory is the point; nothing is reported twice despite clearing
    assert scanner.scan([process(*python_loading(*libs)).pid]) == []


def own_libssl_mapping() -> Mapping:
    with open("/proc/self/maps") as f:
        (mapped,) = [m for m in mapped_files(f.read()) if m.path == str(LIBSSL)]
    return mapped


def test_path_in_another_mount_namespace_goes_through_proc_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # Our own process stands in for a container: its /proc/PID/root view is the same file, so the plain path wins;
    # when our namespace has a different file at that path, the /proc/PID/root path must be used.
    pid, mapped = os.getpid(), own_libssl_mapping()
    assert openable_path(pid, mapped) == str(LIBSSL)
    real_stat = os.stat

    def other_file_here(path, *args, **kwargs):
        return real_stat(__file__ if path == str(LIBSSL) else path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", other_file_here)
    assert openable_path(pid, mapped) == f"/proc/{pid}/root{LIBSSL}"


@pytest.mark.parametrize("shown", ["/var/tmp/chroot/usr/lib/x86_64-linux-gnu/libssl.so.3", __file__])
def test_a_mapped_path_that_leads_elsewhere_goes_through_map_files(shown: str) -> None:
    # Docker's vfs driver on an overlay shows container files under paths that do not exist, or are other files.
    if os.geteuid() != 0:
        pytest.skip("not root: /proc/PID/map_files needs CAP_SYS_ADMIN")
    pid, mapped = os.getpid(), own_libssl_mapping()
    path = openable_path(pid, mapped._replace(path=shown))
    assert path == f"/proc/{pid}/map_files/{mapped.span}"
    lib = tls_libraries._inspect(path, shown)
    assert lib is not None and (lib.kind, lib.file_id) == (OPENSSL, file_id(LIBSSL))
    assert lib.linked == ("shared" if shown.endswith("libssl.so.3") else "static")


def test_a_path_that_leads_nowhere_without_map_files_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without map_files (no CAP_SYS_ADMIN) the scanner must see the failure, not a wrong file.
    pid, mapped = os.getpid(), own_libssl_mapping()
    with pytest.raises(FileNotFoundError):
        openable_path(pid, mapped._replace(path="/no/such/dir/libssl.so.3", span="1-2"))


def test_scan_reports_a_known_file_under_each_process_own_path(process) -> None:
    # A verdict is cached per file, but the path to attach is per process: the first process may be gone.
    scanner = LibraryScanner()
    first = process(*python_loading(LIBSSL))
    (lib,) = [x for x in scanner.libraries_of(first.pid) or [] if x.file_id == file_id(LIBSSL)]
    second = process(*python_loading(LIBSSL))
    (again,) = [x for x in scanner.libraries_of(second.pid) or [] if x.file_id == file_id(LIBSSL)]
    assert scanner.stats.files_inspected == 2  # python and libssl, once each
    assert (lib.pid, again.pid, again.mapped_as) == (first.pid, second.pid, str(LIBSSL))


# --- system_libraries -----------------------------------------------------------------------------------------------


def check_system_libraries(libs: list[TlsLibrary]) -> None:
    by_id = {lib.file_id: lib for lib in libs}
    assert len(by_id) == len(libs)
    assert by_id[file_id(LIBSSL)].kind == OPENSSL
    assert by_id[file_id(LIBGNUTLS)].kind == GNUTLS
    assert file_id(NSS_LIBSSL) not in by_id
    assert file_id(GNUTLS_OPENSSL) not in by_id
    assert all(lib.pid is None and lib.linked == "shared" for lib in libs)


def test_system_libraries_from_ldconfig() -> None:
    check_system_libraries(system_libraries())


def test_system_libraries_without_ldconfig(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tls_libraries, "_ldconfig_paths", lambda: [])
    check_system_libraries(system_libraries())
