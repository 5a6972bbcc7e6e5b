"""The files a process has mapped executable, and a path to each that otelbpf can open and probe.

Shared by the TLS library scan and the function probes: both attach uprobes to files that a process maps,
which may live in another mount namespace (a container) or be reachable only through /proc.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from typing import NamedTuple

logger = logging.getLogger(__name__)

_DELETED = " (deleted)"
_LDCONFIG_LINE = re.compile(r"^\s*(\S+)\s+\(.*\)\s+=>\s+(/.+)$")  # "\tlibssl.so.3 (libc6,x86-64) => /lib/..."


class Mapping(NamedTuple):
    """One file-backed executable mapping of a process."""

    path: str  # as /proc/PID/maps shows it
    dev: int
    inode: int
    span: str  # "start-end" as /proc/PID/map_files names it: no zero padding, unlike maps


def mapped_files(maps_text: str) -> list[Mapping]:
    """Distinct file-backed executable mappings in /proc/PID/maps text, each file once (its first mapping)."""
    seen: dict[tuple[str, int, int], Mapping] = {}
    for line in maps_text.splitlines():
        # address perms offset dev inode pathname; the pathname may contain spaces.
        fields = line.split(None, 5)
        if len(fields) < 6 or "x" not in fields[1]:
            continue
        path, dev, inode = fields[5], fields[3], fields[4]
        if not path.startswith("/") or path.endswith(_DELETED) or inode == "0":
            continue
        major, _, minor = dev.partition(":")
        start, _, end = fields[0].partition("-")
        try:
            key = (path, os.makedev(int(major, 16), int(minor, 16)), int(inode))
            span = f"{int(start, 16):x}-{int(end, 16):x}"
        except ValueError:
            logger.debug("unparsable maps line: %r", line)
            continue
        if key not in seen:
            seen[key] = Mapping(*key, span)
    return list(seen.values())


def openable_path(pid: int, mapped: Mapping) -> str:
    """A path to the file pid maps that otelbpf can open and probe: plain when it is the same file in our namespace,
    else through pid's root, else through pid's map_files.

    The path maps shows is not always one to follow. A container whose root is a directory bind-mounted out of
    another mount (Docker's vfs driver on an overlay, as in a container or chroot of its own) gets paths the kernel
    renders outside that root: they lead nowhere, or to another file. map_files opens exactly the mapped file (it
    needs CAP_SYS_ADMIN, and lasts as long as the mapping), so it is the fallback, and the judge where it can be read.
    """
    in_target = f"/proc/{pid}/root{mapped.path}"
    by_mapping = f"/proc/{pid}/map_files/{mapped.span}"
    try:
        exact: os.stat_result | None = os.stat(by_mapping)
    except OSError:
        exact = None  # not allowed, or the mapping (or process) is gone: trust the path
    try:
        theirs = os.stat(in_target)
    except OSError:
        if exact is None:
            raise
        return by_mapping
    if exact is not None and not same_file(theirs, exact):
        return by_mapping
    try:
        ours = os.stat(mapped.path)
    except OSError:
        return in_target
    same = (ours.st_dev, ours.st_ino) == (theirs.st_dev, theirs.st_ino)
    return mapped.path if same else in_target


def same_file(seen: os.stat_result, mapped: os.stat_result) -> bool:
    """Whether a file reached by path is the one a mapping holds. Through overlayfs the path reports the overlay's
    device while the mapping holds the file beneath, with the same inode number, size and times."""
    if (seen.st_dev, seen.st_ino) == (mapped.st_dev, mapped.st_ino):
        return True
    return (seen.st_ino, seen.st_size, seen.st_mtime_ns) == (mapped.st_ino, mapped.st_size, mapped.st_mtime_ns)


def linker_cache() -> list[tuple[str, str]]:
    """(name, path) of every library in the dynamic linker's cache (``ldconfig -p``): what processes started
    later may map. Empty where there is no ldconfig or no cache (musl-based images)."""
    ldconfig = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.access(p, os.X_OK)), None
    )
    if ldconfig is None:
        return []
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        logger.debug("ldconfig -p failed: %s", exc)
        return []
    return [(m.group(1), m.group(2)) for m in map(_LDCONFIG_LINE.match, out.splitlines()) if m]
