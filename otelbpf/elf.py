"""Minimal ELF64 little-endian reader: which functions a file exports or imports through its dynamic symbol table.

Only what uprobe targeting needs, without third-party dependencies. Files are read with pread of the few
regions that matter (headers, .dynsym, .dynstr), never whole: an executable such as /usr/bin/node is 100 MB.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
from collections.abc import Iterable

logger = logging.getLogger(__name__)

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1

SHT_STRTAB = 3
SHT_DYNSYM = 11
SHN_UNDEF = 0

STT_NOTYPE = 0
STT_FUNC = 2
STT_GNU_IFUNC = 10
STB_GLOBAL = 1
STB_WEAK = 2

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr
SYM = struct.Struct("<IBBHQQ")  # Elf64_Sym
SYM_HEAD = struct.Struct("<IBxH16x")  # st_name, st_info, st_shndx of an Elf64_Sym

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


def _dynsym_sections(fd: int, path: str, file_size: int) -> tuple[tuple, tuple] | None:
    """(.dynsym, its string table) section headers, or None when the file has no .dynsym."""
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
        return None
    if shentsize != SHDR.size:
        raise ElfError(f"{path}: unexpected section header size {shentsize}")
    if shnum == 0:
        # More than 0xff00 sections: the real count is in the first section header's sh_size.
        shnum = _section(fd, path, shoff, 0)[5]
    _check_span(path, file_size, shoff, shnum * SHDR.size, "section header table")
    table = _read(fd, shoff, shnum * SHDR.size, "section header table", path)
    headers = list(SHDR.iter_unpack(table))
    for sh in headers:
        if sh[1] != SHT_DYNSYM:
            continue
        link = sh[6]
        if link >= len(headers) or headers[link][1] != SHT_STRTAB:
            raise ElfError(f"{path}: .dynsym links to section {link}, which is not a string table")
        return sh, headers[link]
    return None


def exported_functions(path: str | os.PathLike, wanted: Iterable[str] | None = None) -> set[str]:
    """Names of the functions a file defines and exports in .dynsym (optionally only those in ``wanted``)."""
    return _functions(path, wanted, defined=True)


def imported_functions(path: str | os.PathLike, wanted: Iterable[str] | None = None) -> set[str]:
    """Names of the functions a file needs from other objects, per .dynsym (optionally only those in ``wanted``)."""
    return _functions(path, wanted, defined=False)


def _functions(path: str | os.PathLike, wanted: Iterable[str] | None, defined: bool) -> set[str]:
    name = os.fspath(path)
    wanted_raw = None if wanted is None else {w.encode() for w in wanted}
    if wanted_raw is not None and not wanted_raw:
        return set()
    symbols, strings = _dynamic_symbol_table(name)
    str_size = len(strings)
    # Undefined references often carry no type (STT_NOTYPE), so only defined symbols are filtered by type.
    types = _FUNC_TYPES if defined else _FUNC_TYPES | {STT_NOTYPE}
    entries = (
        (n, info)
        for n, info, shndx in SYM_HEAD.iter_unpack(symbols)
        if (shndx != SHN_UNDEF) == defined and (info & 0xF) in types and (info >> 4) in _EXPORT_BINDINGS
    )
    if wanted_raw is None:
        strings += b"\0"  # a missing final terminator must not make find() return -1
        return {
            strings[n : strings.find(b"\0", n)].decode("utf-8", "surrogateescape") for n, _ in entries if n < str_size
        }
    # Match wanted names by string-table offset so no other name is ever sliced (node exports ~67k functions).
    # The linker may share a string's tail between names, so every occurrence is a possible st_name.
    offsets = {off: raw.decode() for raw in wanted_raw for off in _occurrences(strings, raw + b"\0")}
    return {offsets[n] for n, _ in entries if n in offsets}


def _dynamic_symbol_table(name: str) -> tuple[bytes, bytes]:
    """The raw .dynsym and .dynstr contents (both empty when the file has no .dynsym)."""
    # O_NONBLOCK: a FIFO or device at a mapped path must not hang the scan; regular files ignore the flag.
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ElfError(f"{name}: not a regular file")
        sections = _dynsym_sections(fd, name, st.st_size)
        if sections is None:
            logger.debug("%s: no .dynsym section", name)
            return b"", b""
        dynsym, dynstr = sections
        sym_off, sym_size, sym_entsize = dynsym[4], dynsym[5], dynsym[9]
        str_off, str_size = dynstr[4], dynstr[5]
        if sym_entsize not in (0, SYM.size):
            raise ElfError(f"{name}: unexpected .dynsym entry size {sym_entsize}")
        sym_size -= sym_size % SYM.size
        _check_span(name, st.st_size, sym_off, sym_size, ".dynsym")
        _check_span(name, st.st_size, str_off, str_size, ".dynstr")
        return _read(fd, sym_off, sym_size, ".dynsym", name), _read(fd, str_off, str_size, ".dynstr", name)
    finally:
        os.close(fd)


def _occurrences(haystack: bytes, needle: bytes) -> list[int]:
    found = []
    at = haystack.find(needle)
    while at >= 0:
        found.append(at)
        at = haystack.find(needle, at + 1)
    return found
