"""Minimal ELF64 little-endian reader: the functions a file exports or imports, and its USDT probes.

Only what uprobe targeting needs, without third-party dependencies. Files are read with pread of the few
regions that matter (headers, .dynsym, .dynstr), never whole: an executable such as /usr/bin/node is 100 MB.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import struct
from collections.abc import Iterable, Iterator

logger = logging.getLogger(__name__)

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1

SHT_STRTAB = 3
SHT_SYMTAB = 2
SHT_NOTE = 7
SHT_DYNSYM = 11
SHT_GNU_HASH = 0x6FFFFFF6
SHN_UNDEF = 0

NT_STAPSDT = 3  # a SystemTap/USDT probe descriptor in .note.stapsdt

STT_NOTYPE = 0
STT_FUNC = 2
STT_GNU_IFUNC = 10
STB_GLOBAL = 1
STB_WEAK = 2

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr
SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym
GNU_HASH_HEADER = struct.Struct("<IIII")  # nbuckets, symoffset, bloom words, bloom shift

_FUNC_TYPES = frozenset({STT_FUNC, STT_GNU_IFUNC})
_EXPORT_BINDINGS = frozenset({STB_GLOBAL, STB_WEAK})


class ElfError(ValueError):
    """The file is not an ELF file this reader understands, or is damaged."""


def _read(fd: int, offset: int, size: int, what: str, path: str) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise ElfError(f"{path}: truncated ELF file ({what} at offset {offset} needs {size} bytes)")
    return data


def _section(fd: int, path: str, shoff: int, index: int) -> tuple:
    """One section header as an SHDR tuple."""
    offset = shoff + index * SHDR.size
    return SHDR.unpack(_read(fd, offset, SHDR.size, f"section header {index}", path))


def _check_span(path: str, file_size: int, offset: int, size: int, what: str) -> None:
    if offset + size > file_size:
        raise ElfError(f"{path}: truncated ELF file ({what} ends at {offset + size}, file has {file_size} bytes)")


@contextlib.contextmanager
def _open_regular(name: str) -> Iterator[tuple[int, os.stat_result]]:
    """A read-only descriptor of a regular file, and its stat; closed on leaving."""
    # O_NONBLOCK: a FIFO or device at a mapped path must not hang the scan; regular files ignore the flag.
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ElfError(f"{name}: not a regular file")
        yield fd, st
    finally:
        os.close(fd)


def _section_headers(fd: int, path: str, file_size: int) -> list[tuple]:
    """Every section header of a 64-bit little-endian ELF file (none when it has no section header table)."""
    ident = _read(fd, 0, 16, "ELF identification", path) if file_size >= 16 else b""
    if not ident.startswith(ELF_MAGIC):
        raise ElfError(f"{path}: not an ELF file")
    if ident[4] != ELFCLASS64:
        raise ElfError(f"{path}: 32-bit ELF is not supported (EI_CLASS={ident[4]})")
    if ident[5] != ELFDATA2LSB:
        raise ElfError(f"{path}: big-endian ELF is not supported (EI_DATA={ident[5]})")
    if file_size < EHDR.size:
        raise ElfError(f"{path}: truncated ELF file (header needs {EHDR.size} bytes, file has {file_size})")
    ehdr = EHDR.unpack(_read(fd, 0, EHDR.size, "ELF header", path))
    shoff, shentsize, shnum = ehdr[6], ehdr[11], ehdr[12]
    if shoff == 0:
        # Section headers are optional for loading (sstrip removes them); without them there is no .dynsym to find.
        return []
    if shentsize != SHDR.size:
        raise ElfError(f"{path}: unexpected section header size {shentsize}")
    if shnum == 0:
        # More than 0xff00 sections: the real count is in the first section header's sh_size.
        shnum = _section(fd, path, shoff, 0)[5]
    _check_span(path, file_size, shoff, shnum * SHDR.size, "section header table")
    table = _read(fd, shoff, shnum * SHDR.size, "section header table", path)
    return list(SHDR.iter_unpack(table))


def _dynsym_sections(fd: int, path: str, file_size: int) -> tuple[tuple, tuple, tuple | None] | None:
    """(.dynsym, its string table, its .gnu.hash or None) section headers, or None when the file has no .dynsym."""
    headers = _section_headers(fd, path, file_size)
    for index, sh in enumerate(headers):
        if sh[1] != SHT_DYNSYM:
            continue
        link = sh[6]
        if link >= len(headers) or headers[link][1] != SHT_STRTAB:
            raise ElfError(f"{path}: .dynsym links to section {link}, which is not a string table")
        gnu_hash = next((h for h in headers if h[1] == SHT_GNU_HASH and h[6] == index), None)
        return sh, headers[link], gnu_hash
    return None


def exported_functions(path: str | os.PathLike, wanted: Iterable[str] | None = None) -> set[str]:
    """Names of the functions a file defines and exports in .dynsym (optionally only those in ``wanted``)."""
    return _functions(path, wanted, defined=True)


def imported_functions(path: str | os.PathLike, wanted: Iterable[str] | None = None) -> set[str]:
    """Names of the functions a file needs from other objects, per .dynsym (optionally only those in ``wanted``)."""
    return _functions(path, wanted, defined=False)


def exported_function_addresses(path: str | os.PathLike, wanted: Iterable[str]) -> dict[str, int]:
    """The st_value (virtual address) of each function in ``wanted`` that a file defines and exports.

    A uprobe can be placed by this address instead of by name; where a name is defined twice (symbol
    versions), the first definition wins, as in bcc's own lookup.
    """
    found: dict[str, int] = {}
    for name, value in _function_entries(os.fspath(path), wanted, defined=True, with_values=True):
        found.setdefault(name, value)
    return found


def _functions(path: str | os.PathLike, wanted: Iterable[str] | None, defined: bool) -> set[str]:
    return {name for name, _ in _function_entries(os.fspath(path), wanted, defined, with_values=False)}


def _function_entries(
    name: str, wanted: Iterable[str] | None, defined: bool, with_values: bool
) -> list[tuple[str, int]]:
    """(name, st_value) of the matching functions in .dynsym; st_value is 0 unless with_values."""
    wanted_raw = None if wanted is None else {w.encode() for w in wanted}
    if wanted_raw is not None and not wanted_raw:
        return []
    # Undefined references often carry no type (STT_NOTYPE), so only defined symbols are filtered by type.
    types = _FUNC_TYPES if defined else _FUNC_TYPES | {STT_NOTYPE}

    def keep(info: int, shndx: int) -> bool:
        return (shndx != SHN_UNDEF) == defined and (info & 0xF) in types and (info >> 4) in _EXPORT_BINDINGS

    symbols, strings, hashed = _dynamic_symbol_table(name, wanted_raw, defined)
    if hashed is not None:
        return [(sym, value if with_values else 0) for sym, info, shndx, value in hashed if keep(info, shndx)]
    str_size = len(strings)
    if wanted_raw is None:
        strings += b"\0"  # a missing final terminator must not make find() return -1
        rows = ((n, info, shndx, value) for n, info, _, shndx, value, _ in SYM.iter_unpack(symbols))
        return [
            (strings[n : strings.find(b"\0", n)].decode("utf-8", "surrogateescape"), value if with_values else 0)
            for n, info, shndx, value in rows
            if n < str_size and keep(info, shndx)
        ]
    # Match wanted names by string-table offset so no other name is ever sliced, and find the symbols that
    # carry those offsets with bytes.find rather than unpacking every entry: node exports ~67k functions, and
    # a new node process must be hooked within the few tens of milliseconds before its first TLS call.
    # The linker may share a string's tail between names, so every occurrence is a possible st_name.
    found: list[tuple[int, str, int]] = []
    for raw in wanted_raw:
        for off in _occurrences(strings, raw + b"\0"):
            pattern = off.to_bytes(4, "little")
            at = symbols.find(pattern)
            while at >= 0:
                if at % SYM.size == 0:
                    _, info, _, shndx, value, _ = SYM.unpack_from(symbols, at)
                    if keep(info, shndx):
                        found.append((at, raw.decode(), value if with_values else 0))
                at = symbols.find(pattern, at + 1)
    return [(sym, value) for _, sym, value in sorted(found)]


SymbolRow = tuple[str, int, int, int]  # name, st_info, st_shndx, st_value


def _dynamic_symbol_table(
    name: str, wanted: set[bytes] | None = None, defined: bool = True
) -> tuple[bytes, bytes, list[SymbolRow] | None]:
    """The raw .dynsym and .dynstr contents (both empty when the file has no .dynsym), or, when only ``wanted``
    defined names are asked for and the file has a GNU hash table, just their rows, looked up as ld.so does."""
    with _open_regular(name) as (fd, st):
        sections = _dynsym_sections(fd, name, st.st_size)
        if sections is None:
            logger.debug("%s: no .dynsym section", name)
            return b"", b"", None
        dynsym, dynstr, gnu_hash = sections
        sym_off, sym_size, sym_entsize = dynsym[4], dynsym[5], dynsym[9]
        str_off, str_size = dynstr[4], dynstr[5]
        if sym_entsize not in (0, SYM.size):
            raise ElfError(f"{name}: unexpected .dynsym entry size {sym_entsize}")
        sym_size -= sym_size % SYM.size
        _check_span(name, st.st_size, sym_off, sym_size, ".dynsym")
        _check_span(name, st.st_size, str_off, str_size, ".dynstr")
        if wanted is not None and gnu_hash is not None:
            # Reading node's tables whole and searching them takes ~20 ms; the hash table, a millisecond.
            table = _SymbolLookup(fd, name, st.st_size, sym_off, sym_size, str_off, str_size, gnu_hash)
            hashed = [row for want in sorted(wanted) for row in table.rows(want)]
            # Undefined symbols sit below the hashed range, except those a non-PIE executable gives an
            # address (its PLT entry, for function pointer comparisons): they are hashed.
            return b"", b"", hashed if defined else table.unhashed(wanted) + hashed
        return _read(fd, sym_off, sym_size, ".dynsym", name), _read(fd, str_off, str_size, ".dynstr", name), None


def function_symbols(path: str | os.PathLike, max_table_bytes: int = 64 << 20) -> dict[str, int]:
    """Every function a file defines, by name, with its st_value: .dynsym's and, where present, .symtab's (which
    adds static and hidden functions). A name defined twice keeps its first address, .dynsym first.

    A symbol table larger than max_table_bytes is an ElfError, not a read of all of it."""
    name = os.fspath(path)
    with _open_regular(name) as (fd, st):
        headers = _section_headers(fd, name, st.st_size)
        found: dict[str, int] = {}
        for kind in (SHT_DYNSYM, SHT_SYMTAB):
            for sh in headers:
                if sh[1] != kind:
                    continue
                link = sh[6]
                if link >= len(headers) or headers[link][1] != SHT_STRTAB:
                    raise ElfError(f"{name}: a symbol table links to section {link}, which is not a string table")
                strtab = headers[link]
                size = sh[5] - sh[5] % SYM.size
                for what, off, length in (("symbol table", sh[4], size), ("string table", strtab[4], strtab[5])):
                    _check_span(name, st.st_size, off, length, what)
                    if length > max_table_bytes:
                        raise ElfError(f"{name}: {what} of {length} bytes, more than {max_table_bytes} read")
                strings = _read(fd, strtab[4], strtab[5], "string table", name) + b"\0"
                for n, info, _, shndx, value, _ in SYM.iter_unpack(_read(fd, sh[4], size, "symbol table", name)):
                    if shndx == SHN_UNDEF or (info & 0xF) not in _FUNC_TYPES or not value or n >= len(strings) - 1:
                        continue
                    sym = strings[n : strings.find(b"\0", n)].decode("utf-8", "surrogateescape")
                    if sym:
                        found.setdefault(sym, value)
        return found


def gnu_hash(name: bytes) -> int:
    """The GNU symbol hash (DJB's, 32-bit) of a symbol name."""
    h = 5381
    for c in name:
        h = (h * 33 + c) & 0xFFFFFFFF
    return h


class _SymbolLookup:
    """Defined symbols found by name through .gnu.hash, reading only the entries on the name's chain."""

    def __init__(
        self, fd: int, path: str, file_size: int, sym_off: int, sym_size: int, str_off: int, str_size: int, sh: tuple
    ) -> None:
        self._fd, self._path = fd, path
        self._sym_off, self._nsyms = sym_off, sym_size // SYM.size
        self._str_off, self._str_size = str_off, str_size
        off, size = sh[4], sh[5]
        _check_span(path, file_size, off, size, ".gnu.hash")
        if size < GNU_HASH_HEADER.size:
            raise ElfError(f"{path}: truncated .gnu.hash")
        self._nbuckets, self._symoffset, bloom_words, _ = GNU_HASH_HEADER.unpack(
            _read(fd, off, GNU_HASH_HEADER.size, ".gnu.hash", path)
        )
        self._buckets = off + GNU_HASH_HEADER.size + 8 * bloom_words
        self._chains = self._buckets + 4 * self._nbuckets
        self._end = off + size
        if self._nbuckets == 0 or self._chains > self._end:
            raise ElfError(f"{path}: malformed .gnu.hash")

    def _u32(self, offset: int) -> int:
        if offset + 4 > self._end:
            raise ElfError(f"{self._path}: .gnu.hash chain runs past its section")
        return int.from_bytes(_read(self._fd, offset, 4, ".gnu.hash", self._path), "little")

    def unhashed(self, wanted: set[bytes]) -> list[SymbolRow]:
        """The symbols below the hashed range (undefined ones, a few hundred) named in ``wanted``."""
        count = min(self._symoffset, self._nsyms)
        table = _read(self._fd, self._sym_off, count * SYM.size, ".dynsym", self._path)
        longest = max(len(w) for w in wanted) + 1
        found = []
        for st_name, info, _, shndx, value, _ in SYM.iter_unpack(table):
            if st_name >= self._str_size:
                continue
            size = min(longest, self._str_size - st_name)
            raw = _read(self._fd, self._str_off + st_name, size, ".dynstr", self._path).split(b"\0", 1)[0]
            if raw in wanted:
                found.append((raw.decode(), info, shndx, value))
        return found

    def rows(self, name: bytes) -> list[SymbolRow]:
        """Every symbol named ``name`` on its hash chain (several when versioned), in table order."""
        h = gnu_hash(name)
        index = self._u32(self._buckets + 4 * (h % self._nbuckets))
        if index < self._symoffset:
            return []
        found = []
        while index < self._nsyms:
            chain = self._u32(self._chains + 4 * (index - self._symoffset))
            if (chain | 1) == (h | 1):
                st_name, info, _, shndx, value, _ = SYM.unpack(
                    _read(self._fd, self._sym_off + index * SYM.size, SYM.size, ".dynsym", self._path)
                )
                if st_name + len(name) < self._str_size:
                    at = self._str_off + st_name
                    if _read(self._fd, at, len(name) + 1, ".dynstr", self._path) == name + b"\0":
                        found.append((name.decode(), info, shndx, value))
            if chain & 1:  # the last entry of this bucket's chain
                break
            index += 1
        return found


def _occurrences(haystack: bytes, needle: bytes) -> list[int]:
    found = []
    at = haystack.find(needle)
    while at >= 0:
        found.append(at)
        at = haystack.find(needle, at + 1)
    return found


def stapsdt_probes(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(provider, name) of every USDT probe in an ELF file's .note.stapsdt section, in file order."""
    name = os.fspath(path)
    with _open_regular(name) as (fd, st):
        # Every region is checked against the file's size before it is read: a damaged header must give an
        # ElfError, not a read of gigabytes.
        headers = _section_headers(fd, name, st.st_size)
        if not headers:
            return []
        shstrndx = EHDR.unpack(_read(fd, 0, EHDR.size, "ELF header", name))[13]
        if shstrndx >= len(headers):
            raise ElfError(f"{name}: section name table {shstrndx} is not among the {len(headers)} sections")
        names_sh = headers[shstrndx]
        _check_span(name, st.st_size, names_sh[4], names_sh[5], "section name table")
        names = _read(fd, names_sh[4], names_sh[5], "section name table", name)
        probes: list[tuple[str, str]] = []
        for sh in headers:
            if sh[1] != SHT_NOTE or names[sh[0] : sh[0] + 14] != b".note.stapsdt\0":
                continue
            _check_span(name, st.st_size, sh[4], sh[5], ".note.stapsdt")
            probes += _notes(_read(fd, sh[4], sh[5], ".note.stapsdt", name))
        return probes


def _notes(data: bytes) -> list[tuple[str, str]]:
    """The stapsdt notes of one note section: (provider, name) each."""
    out = []
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, kind = struct.unpack_from("<III", data, pos)
        name_at = pos + 12
        desc_at = name_at + (namesz + 3) // 4 * 4
        end = desc_at + (descsz + 3) // 4 * 4
        if end > len(data) + 3:
            break  # damaged: keep what was read
        if kind == NT_STAPSDT and data[name_at : name_at + namesz] == b"stapsdt\0" and descsz > 24:
            strings = data[desc_at + 24 : desc_at + descsz].split(b"\0")
            if len(strings) >= 2:
                out.append((strings[0].decode("ascii", "replace"), strings[1].decode("ascii", "replace")))
        pos = end
    return out
