"""Which functions to time: ``--function SPEC`` flags and a config file's ``functions:`` list.

Native code is ``LIB:SYMBOL``: LIB a path, or a file name or its prefix matched against what the target
processes map or run (``libc`` matches ``libc.so.6``, not ``libcrypto.so.3``); SYMBOL a name or a glob.
Python is ``python:[FILE:]FUNCTION``, for CPython's USDT probes: FILE matches the end of the code's file
path. A flag may carry the same settings as a config entry after commas:
``libpq:PQexec,min_duration=1ms,max_per_second=100,name=query``.
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NATIVE = "native"
PYTHON = "python"

# Per function: spans beyond this rate are shed (and counted); the histogram still sees every call.
DEFAULT_MAX_PER_SECOND = 1000
SETTINGS = ("min_duration", "max_per_second", "name")
CONFIG_KEYS = ("functions",)
_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "ms": 1_000_000, "s": 1_000_000_000}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ns|us|µs|ms|s)?\s*$")
_GLOB_CHARS = frozenset("*?[")


class SpecError(ValueError):
    """A function spec or config file that cannot be used; the message is one line and names it."""


@dataclass(frozen=True)
class FunctionSpec:
    """One function (or glob of functions) to turn into spans and a duration histogram."""

    kind: str  # NATIVE or PYTHON
    library: str  # NATIVE: a path, or a file name or prefix; PYTHON: ""
    symbol: str  # NATIVE: a symbol name or glob; PYTHON: the function's name (a glob too)
    file: str = ""  # PYTHON: the end of the code's file path ("" for any file)
    name: str = ""  # span name, instead of the function's own
    min_duration_ns: int = 0  # shorter calls give no span, but still count in the histogram
    max_per_second: int = DEFAULT_MAX_PER_SECOND  # spans per second for this spec; 0: no limit
    text: str = ""  # as the user wrote it, for messages

    @property
    def is_glob(self) -> bool:
        """Whether the symbol is a pattern that may match several functions."""
        return bool(_GLOB_CHARS & set(self.symbol))

    def matches_symbol(self, symbol: str) -> bool:
        """Whether a symbol (native) or function name (Python) is one this spec asks for."""
        return fnmatch.fnmatchcase(symbol, self.symbol)

    def matches_library(self, path: str) -> bool:
        """Whether a file a process maps or runs is the LIB of a native spec."""
        if self.kind != NATIVE:
            return False
        if "/" in self.library:
            return os.path.normpath(path) == os.path.normpath(self.library)
        return library_name_matches(os.path.basename(path), self.library)


def library_name_matches(file_name: str, wanted: str) -> bool:
    """``libc`` names ``libc.so.6`` and ``libc-2.31.so``, ``libwork.so`` names ``libwork.so.1``; ``libc`` never
    names ``libcrypto.so.3``: after the prefix must come the end, a dot or a dash."""
    if not file_name.startswith(wanted):
        return False
    rest = file_name[len(wanted) :]
    return rest == "" or rest[0] in ".-"


def parse_duration_ns(value: object, what: str) -> int:
    """A duration as nanoseconds: a number of seconds, or a number with a unit (ns, us, µs, ms, s)."""
    if isinstance(value, bool):
        raise SpecError(f"{what}: {value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise SpecError(f"{what}: {value!r} is negative")
        return round(value * 1_000_000_000)
    match = _DURATION.match(str(value))
    if not match:
        raise SpecError(f"{what}: {value!r} is not a duration (for example 500us, 2ms or 0.5s)")
    number, unit = match.groups()
    return round(float(number) * _UNITS_NS[unit or "s"])


def parse_spec(text: str, settings: Mapping[str, Any] | None = None) -> FunctionSpec:
    """One spec, from a flag (settings after commas) or a config entry (settings given)."""
    raw = text.strip()
    head, *extra = raw.split(",")
    given = dict(settings or {})
    for item in extra:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in SETTINGS:
            raise SpecError(f"{raw!r}: {item.strip()!r} is not one of {', '.join(f'{k}=...' for k in SETTINGS)}")
        if key in given:
            raise SpecError(f"{raw!r}: {key} given twice")
        given[key] = value.strip()
    unknown = sorted(set(given) - set(SETTINGS))
    if unknown:
        raise SpecError(f"{raw!r}: unknown setting(s) {', '.join(unknown)} (known: {', '.join(SETTINGS)})")
    head = head.strip()
    prefix, sep, rest = head.partition(":")
    if not sep or not prefix or not rest:
        raise SpecError(f"{raw!r}: expected LIB:SYMBOL or python:[FILE:]FUNCTION")
    if prefix == PYTHON:
        file, sep, function = rest.rpartition(":")
        if not function:
            raise SpecError(f"{raw!r}: no Python function name after the last ':'")
        kind, library, symbol = PYTHON, "", function
    else:
        if ":" in rest and "::" not in rest:
            raise SpecError(f"{raw!r}: one ':' between LIB and SYMBOL (write python:FILE:FUNCTION for Python)")
        kind, library, symbol, file = NATIVE, prefix, rest, ""
    _check_pattern(raw, symbol)
    name = str(given.get("name", "")).strip()
    max_per_second = _non_negative_int(given.get("max_per_second", DEFAULT_MAX_PER_SECOND), f"{raw!r}: max_per_second")
    min_ns = parse_duration_ns(given.get("min_duration", 0), f"{raw!r}: min_duration")
    return FunctionSpec(kind, library, symbol, file, name, min_ns, max_per_second, raw)


def _check_pattern(raw: str, symbol: str) -> None:
    if any(c.isspace() for c in symbol):
        raise SpecError(f"{raw!r}: a symbol has no spaces")
    if "[" in symbol and "]" not in symbol.partition("[")[2]:
        raise SpecError(f"{raw!r}: unclosed '[' in the symbol pattern")


def _non_negative_int(value: object, what: str) -> int:
    if isinstance(value, bool):
        raise SpecError(f"{what}: {value!r} is not a whole number")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise SpecError(f"{what}: {value!r} is not a whole number") from None
    if number < 0:
        raise SpecError(f"{what}: {number} is negative")
    return number


def specs_from_config(document: object, source: str) -> list[FunctionSpec]:
    """The ``functions:`` entries of a parsed config file: each a spec string, or a mapping with ``function:``
    and its settings."""
    if document is None:
        return []
    if not isinstance(document, dict):
        raise SpecError(f"{source}: expected a mapping with {', '.join(CONFIG_KEYS)}")
    unknown = sorted(str(k) for k in document if k not in CONFIG_KEYS)
    if unknown:
        raise SpecError(f"{source}: unknown key(s) {', '.join(unknown)} (known: {', '.join(CONFIG_KEYS)})")
    entries = document.get("functions") or []
    if not isinstance(entries, list):
        raise SpecError(f"{source}: functions must be a list")
    specs = []
    for i, entry in enumerate(entries, 1):
        where = f"{source}: functions[{i}]"
        if isinstance(entry, str):
            specs.append(_in(where, entry, None))
        elif isinstance(entry, dict):
            settings = dict(entry)
            text = settings.pop("function", None)
            if not isinstance(text, str):
                raise SpecError(f"{where}: needs function: LIB:SYMBOL or python:[FILE:]FUNCTION")
            specs.append(_in(where, text, settings))
        else:
            raise SpecError(f"{where}: expected a spec string or a mapping with function:")
    return specs


def _in(where: str, text: str, settings: Mapping[str, Any] | None) -> FunctionSpec:
    try:
        return parse_spec(text, settings)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc}") from None


def load_config(path: str | os.PathLike) -> list[FunctionSpec]:
    """The function specs of a YAML config file (``--config FILE``)."""
    import yaml  # only when a config file is given

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    return specs_from_config(document, str(path))


def all_specs(flags: Iterable[str], config: str | os.PathLike | None) -> list[FunctionSpec]:
    """The config file's specs, then the flags', duplicates (the same text and settings) once."""
    specs = load_config(config) if config else []
    specs += [parse_spec(text) for text in flags]
    seen: set[FunctionSpec] = set()
    unique = []
    for spec in specs:
        if spec not in seen:
            seen.add(spec)
            unique.append(spec)
    return unique


def matching_symbols(spec: FunctionSpec, symbols: Mapping[str, int], limit: int) -> dict[str, int]:
    """The symbols (name -> address) a native spec names in one file, at most ``limit`` of a glob, by name.

    A glob matching more than the limit is an error naming how many it matched: hooking them all could cost
    more than the user meant (two uprobe traps per call each)."""
    if not spec.is_glob:
        return {spec.symbol: symbols[spec.symbol]} if spec.symbol in symbols else {}
    found = {name: addr for name, addr in symbols.items() if spec.matches_symbol(name)}
    if len(found) > limit:
        raise SpecError(
            f"{spec.text!r} matches {len(found)} functions in one file, more than the limit of {limit}: "
            "narrow the pattern"
        )
    return dict(sorted(found.items()))
