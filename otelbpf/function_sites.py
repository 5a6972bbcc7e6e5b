"""Where each configured native function is: the files a target process maps, and the symbol's address in each.

At start, every spec must name something that exists: a LIB given as a path must be that file and define the
symbol; a LIB given by name must be mapped by a target or be on this machine (the linker cache, or a program on
PATH) and define the symbol there. Anything else is a SpecError, one line, before any probe goes in. Later, a
process that maps a matching file without the symbol gets a warning naming the process, once per file.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from otelbpf.elf import ElfError, function_symbols
from otelbpf.functions import NATIVE, FunctionSpec, SpecError, matching_symbols
from otelbpf.mappings import Mapping, linker_cache, mapped_files, openable_path

logger = logging.getLogger(__name__)

# A glob matching more functions than this in one file is refused: each is two uprobe traps per call.
DEFAULT_MAX_SYMBOLS = 64


@dataclass(frozen=True)
class FunctionSite:
    """One function of one file: where a spec's entry and return uprobes go."""

    spec: FunctionSpec
    path: str  # openable from otelbpf's mount namespace
    shown: str  # the path the process maps, for messages
    file_id: tuple[int, int]  # (st_dev, st_ino): one pair of probes per file and function
    symbol: str
    address: int  # st_value, as uprobes are placed by it


class FunctionLocator:
    """Finds the sites of native specs in processes' files; each file's symbols are read once (bounded cache)."""

    def __init__(
        self, specs: Sequence[FunctionSpec], max_symbols: int = DEFAULT_MAX_SYMBOLS, max_cached_files: int = 1024
    ) -> None:
        self.specs = [s for s in specs if s.kind == NATIVE]
        self.max_symbols = max_symbols
        self._max_cached = max_cached_files
        self._symbols: dict[tuple[int, int], dict[str, int]] = {}
        self._warned: set[tuple[str, tuple[int, int]]] = set()

    def symbols_of(self, path: str) -> dict[str, int]:
        """The functions a file defines (cached by file identity)."""
        st = os.stat(path)
        key = (st.st_dev, st.st_ino)
        found = self._symbols.get(key)
        if found is None:
            found = function_symbols(path)
            if len(self._symbols) >= self._max_cached:
                self._symbols.clear()  # bounded; refilled by the files still mapped
            self._symbols[key] = found
        return found

    def check_at_start(self, pids: Iterable[int]) -> None:
        """Raise a SpecError for the first spec that names no existing file or no function in its file."""
        mapped = [(pid, m) for pid in pids for m in _mappings(pid)]
        cache: list[tuple[str, str]] | None = None
        for spec in self.specs:
            if "/" in spec.library:
                candidates = [spec.library]
                if not os.path.isfile(spec.library):
                    raise SpecError(f"{spec.text!r}: no such file {spec.library}")
            else:
                candidates = [openable_path(pid, m) for pid, m in mapped if spec.matches_library(m.path)]
                if not candidates:
                    if cache is None:
                        cache = linker_cache()
                    candidates = sorted({os.path.realpath(p) for name, p in cache if spec.matches_library(name)})
                    program = shutil.which(spec.library)
                    if program:
                        candidates.append(os.path.realpath(program))
                if not candidates:
                    raise SpecError(
                        f"{spec.text!r}: unknown library {spec.library!r}: no target process maps it, and it is "
                        "neither in the linker cache nor a program on PATH"
                    )
            if not any(self._defines(spec, path) for path in dict.fromkeys(candidates)):
                shown = ", ".join(dict.fromkeys(candidates))
                raise SpecError(f"{spec.text!r}: no function {spec.symbol!r} in {shown}")

    def _defines(self, spec: FunctionSpec, path: str) -> bool:
        try:
            return bool(matching_symbols(spec, self.symbols_of(path), self.max_symbols))
        except (OSError, ElfError) as exc:
            raise SpecError(f"{spec.text!r}: cannot read {path}: {exc}") from None

    def sites_in(self, pid: int) -> list[FunctionSite]:
        """Every site of the specs in the files pid maps now; a matching file without the function is warned
        about once. A glob over the limit is warned about and skipped for that file."""
        sites = []
        for m in _mappings(pid):
            wanted = [s for s in self.specs if s.matches_library(m.path)]
            if not wanted:
                continue
            try:
                path = openable_path(pid, m)
                st = os.stat(path)
                file_id = (st.st_dev, st.st_ino)
                symbols = self.symbols_of(path)
            except (OSError, ElfError) as exc:
                logger.warning("functions: cannot read %s of pid %d: %s", m.path, pid, exc)
                continue
            for spec in wanted:
                try:
                    found = matching_symbols(spec, symbols, self.max_symbols)
                except SpecError as exc:
                    self._warn_once(spec, file_id, "functions: %s (pid %d); not hooked there", exc, pid)
                    continue
                if not found:
                    self._warn_once(
                        spec, file_id, "functions: pid %d maps %s, which has no function %r", pid, m.path, spec.symbol
                    )
                sites += [FunctionSite(spec, path, m.path, file_id, name, addr) for name, addr in found.items()]
        return sites

    def _warn_once(self, spec: FunctionSpec, file_id: tuple[int, int], msg: str, *args: object) -> None:
        key = (spec.text, file_id)
        if key not in self._warned:
            if len(self._warned) >= self._max_cached:
                self._warned.clear()  # bounded: at worst a warning repeats
            self._warned.add(key)
            logger.warning(msg, *args)


def _mappings(pid: int) -> list[Mapping]:
    try:
        with open(f"/proc/{pid}/maps") as f:
            return mapped_files(f.read())
    except OSError:
        return []  # gone, or not ours to read: nothing to hook
