"""The ELF reader against small objects built with gcc, real system libraries, and damaged files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from otelbpf.elf import (
    ElfError,
    exported_function_addresses,
    exported_functions,
    function_symbols,
    gnu_hash,
    imported_functions,
)

LIBSSL = Path("/usr/lib/x86_64-linux-gnu/libssl.so.3")

# Everything the reader must tell apart: exported functions (plain, weak, ifunc) versus a data object, a hidden
# function, a static one and an undefined reference.
LIBRARY_SOURCE = """
extern int imported_fn(int);
int exported_data = 1;
static int local_helper(int x) { return x + exported_data; }
__attribute__((visibility("hidden"))) int hidden_fn(int x) { return local_helper(x); }
int SSL_read(void *ssl, void *buf, int num) { (void)ssl; (void)buf; return hidden_fn(num); }
int SSL_write(void *ssl, const void *buf, int num) { (void)ssl; (void)buf; return imported_fn(num); }
__attribute__((weak)) int weak_fn(int x) { return x; }
static int impl(int x) { return x; }
static int (*resolve(void))(int) { return impl; }
int ifunc_fn(int) __attribute__((ifunc("resolve")));
"""

# Like a program with OpenSSL linked in statically (node): the API is in the executable itself.
PROGRAM_SOURCE = """
static int local_helper(int x) { return x + 1; }
int SSL_read(void *ssl, void *buf, int num) { (void)ssl; (void)buf; return local_helper(num); }
int SSL_write(void *ssl, const void *buf, int num) { (void)ssl; (void)buf; return num; }
int main(void) { return SSL_read(0, 0, 0) + SSL_write(0, 0, 0); }
"""

NAMES = ("SSL_read", "SSL_write", "weak_fn", "ifunc_fn", "exported_data", "hidden_fn", "local_helper", "imported_fn")


def gcc(tmp_path: Path, name: str, source: str, *flags: str) -> Path:
    """Compile source into tmp_path/name."""
    # The fakes are the point of these tests: without gcc they cannot run, which must fail, not skip.
    assert shutil.which("gcc") is not None, "gcc not installed (make setup installs it)"
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    out = tmp_path / name
    subprocess.run(["gcc", "-Wall", "-Werror", *flags, "-o", str(out), str(src)], check=True, capture_output=True)
    return out


def readelf_exports(path: Path) -> set[str]:
    """The same question answered by binutils, as an independent oracle."""
    out = subprocess.run(["readelf", "-W", "--dyn-syms", str(path)], check=True, capture_output=True, text=True)
    names = set()
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0].endswith(":") and fields[3] in ("FUNC", "IFUNC"):
            if fields[4] in ("GLOBAL", "WEAK") and fields[6] != "UND":
                names.add(fields[7].split("@")[0])
    return names


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("elf")
    return {
        "shared": gcc(tmp, "libfake.so", LIBRARY_SOURCE, "-shared", "-fPIC"),
        "rdynamic": gcc(tmp, "rdynamic", PROGRAM_SOURCE, "-rdynamic"),
        "plain": gcc(tmp, "plain", PROGRAM_SOURCE),
        # No libc and no dynamic linking at all: the file has no .dynsym.
        "static": gcc(tmp, "static", "void _start(void) { for (;;) {} }\n", "-static", "-nostdlib"),
    }


def test_shared_object_exports_exactly_its_global_functions(built: dict[str, Path]) -> None:
    assert exported_functions(built["shared"]) == {"SSL_read", "SSL_write", "weak_fn", "ifunc_fn"}
    assert exported_functions(built["shared"], NAMES) == {"SSL_read", "SSL_write", "weak_fn", "ifunc_fn"}
    assert exported_functions(str(built["shared"]), ["SSL_write", "SSL_read_ex"]) == {"SSL_write"}


def test_undefined_references_are_imports_not_exports(built: dict[str, Path]) -> None:
    assert imported_functions(built["shared"], NAMES) == {"imported_fn"}
    assert "imported_fn" not in exported_functions(built["shared"])


def test_executable_with_rdynamic_exports_its_functions(built: dict[str, Path]) -> None:
    exported = exported_functions(built["rdynamic"])
    assert exported_functions(built["rdynamic"], NAMES) == {"SSL_read", "SSL_write"}
    assert {"SSL_read", "SSL_write", "main"} <= exported
    assert "local_helper" not in exported


def test_executable_without_rdynamic_exports_nothing(built: dict[str, Path]) -> None:
    assert exported_functions(built["plain"]) == set()


def test_file_without_dynsym_exports_nothing(built: dict[str, Path]) -> None:
    assert exported_functions(built["static"]) == set()
    assert exported_functions(built["static"], ["SSL_read"]) == set()


def test_empty_wanted_reads_nothing(built: dict[str, Path]) -> None:
    assert exported_functions(built["shared"], []) == set()


@pytest.mark.parametrize("name", ["shared", "rdynamic", "plain", "static"])
def test_agrees_with_readelf(built: dict[str, Path], name: str) -> None:
    assert exported_functions(built[name]) == readelf_exports(built[name])


def test_real_libssl_exports_the_openssl_api() -> None:
    wanted = ["SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex", "gnutls_record_recv"]
    assert exported_functions(LIBSSL, wanted) == {"SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex"}
    assert exported_functions(LIBSSL) == readelf_exports(LIBSSL)


def readelf_values(path: Path) -> dict[str, int]:
    """Each exported function's st_value, by binutils (the first definition of a versioned name)."""
    out = subprocess.run(["readelf", "-W", "--dyn-syms", str(path)], check=True, capture_output=True, text=True)
    values: dict[str, int] = {}
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0].endswith(":") and fields[3] in ("FUNC", "IFUNC") and fields[6] != "UND":
            values.setdefault(fields[7].split("@")[0], int(fields[1], 16))
    return values


@pytest.mark.parametrize("name", ["shared", "rdynamic"])
def test_addresses_agree_with_readelf(built: dict[str, Path], name: str) -> None:
    values = readelf_values(built[name])
    assert exported_function_addresses(built[name], NAMES) == {n: values[n] for n in NAMES if n in values}


@pytest.mark.parametrize("path", [LIBSSL, Path("/usr/bin/node")])
def test_real_binaries_are_looked_up_through_their_gnu_hash(path: Path) -> None:
    """libssl and node (67k exports): the hash-table lookup finds what a full read of the tables finds."""
    wanted = ["SSL_read", "SSL_write", "SSL_read_ex", "SSL_write_ex", "gnutls_record_recv", "malloc"]
    values = readelf_values(path)
    assert exported_function_addresses(path, wanted) == {n: values[n] for n in wanted if n in values}
    assert exported_functions(path, wanted) == {n for n in wanted if n in values}
    assert imported_functions(path, wanted) == {n for n in imported_functions(path) if n in wanted}


def test_gnu_hash_of_known_names() -> None:
    assert gnu_hash(b"") == 5381
    assert gnu_hash(b"printf") == 0x156B2BB8  # the value in the GNU hash section specification's example


def test_not_an_elf_file(tmp_path: Path) -> None:
    path = tmp_path / "script.sh"
    path.write_text("#!/bin/sh\necho hello\n")
    with pytest.raises(ElfError, match="not an ELF file"):
        exported_functions(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with pytest.raises(ElfError, match="not an ELF file"):
        exported_functions(path)


@pytest.mark.parametrize("size", [20, 64, 1024])
def test_truncated_file(built: dict[str, Path], tmp_path: Path, size: int) -> None:
    # Cut inside the ELF header, right after it, and before the section headers at the end of the file.
    path = tmp_path / "truncated.so"
    path.write_bytes(built["shared"].read_bytes()[:size])
    with pytest.raises(ElfError, match="truncated"):
        exported_functions(path)


@pytest.mark.parametrize(
    ("ident", "message"),
    [(b"\x7fELF\x01\x01\x01", "32-bit"), (b"\x7fELF\x02\x02\x01", "big-endian")],
)
def test_unsupported_layouts(tmp_path: Path, ident: bytes, message: str) -> None:
    path = tmp_path / "other.so"
    path.write_bytes(ident + bytes(64 - len(ident)))
    with pytest.raises(ElfError, match=message):
        exported_functions(path)


def test_directory_is_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(ElfError, match="not a regular file"):
        exported_functions(tmp_path)


def test_missing_file_raises_oserror(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        exported_functions(tmp_path / "missing.so")


def test_elf_error_is_a_value_error() -> None:
    assert issubclass(ElfError, ValueError)


def readelf_defined_functions(path: Path) -> set[str]:
    """Every defined function in .dynsym and .symtab, by binutils."""
    out = subprocess.run(["readelf", "-W", "--syms", str(path)], check=True, capture_output=True, text=True)
    names = set()
    for line in out.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0].endswith(":") and fields[3] in ("FUNC", "IFUNC"):
            if fields[6] != "UND" and int(fields[1], 16):
                names.add(fields[7].split("@")[0])
    return names


def test_function_symbols_add_the_symbol_tables_static_and_hidden_functions(built: dict[str, Path]) -> None:
    found = function_symbols(built["shared"])
    statics = {"hidden_fn", "local_helper", "impl", "resolve"}
    assert {"SSL_read", "SSL_write", "weak_fn", "ifunc_fn", *statics} <= set(found)
    assert "exported_data" not in found and "imported_fn" not in found
    assert set(found) == readelf_defined_functions(built["shared"])
    assert found["SSL_read"] == exported_function_addresses(built["shared"], ["SSL_read"])["SSL_read"]
    # A file with no .dynsym at all still has its .symtab.
    assert set(function_symbols(built["static"])) == {"_start"}


def test_function_symbols_of_a_stripped_file_are_its_exports(built: dict[str, Path], tmp_path: Path) -> None:
    stripped = tmp_path / "libstripped.so"
    shutil.copy(built["shared"], stripped)
    subprocess.run(["strip", "--strip-all", str(stripped)], check=True)
    assert set(function_symbols(stripped)) == exported_functions(stripped) == readelf_defined_functions(stripped)


def test_function_symbols_refuse_a_table_over_the_bound(built: dict[str, Path]) -> None:
    with pytest.raises(ElfError, match="more than 64 read"):
        function_symbols(built["shared"], max_table_bytes=64)


def test_function_symbols_of_debian_python_include_the_interpreter_loop() -> None:
    found = function_symbols("/usr/bin/python3.11")
    assert "_PyEval_EvalFrameDefault" in found and found["_PyEval_EvalFrameDefault"] > 0
