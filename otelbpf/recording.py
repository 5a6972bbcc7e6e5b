"""Recordings of a run: every ring-buffer record drained, and the facts needed to rebuild its spans offline.

A span depends on more than its kernel record: the resource of its process (read from /proc), the
clock offset (kernel monotonic -> wall), the id generator's seed, the times the linker was given,
and the options that shape spans. ``otelbpf record`` writes all of them, in the order the pipeline
met them; ``otelbpf replay`` (replay.py) hands them back in that order, so the spans come out the same.

The file (integers little-endian):
    magic ``OTELBPF-RECORDING\\n``, u16 format version;
    entries, each: u8 kind, u32 payload length, payload (see ``Kind``).
Writes are buffered and each batch is written as it is drained: a run never sits in memory. A file
cut short (otelbpf killed mid-write) reads back up to its last whole entry.
"""

from __future__ import annotations

import enum
import json
import logging
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from otelbpf.clock import ClockMap
from otelbpf.collector import KernelSource
from otelbpf.events import ProcessEvent
from otelbpf.resources import ResourceCache
from otelbpf.spans import Resource

logger = logging.getLogger(__name__)

MAGIC = b"OTELBPF-RECORDING\n"
# Bumped whenever a kernel record's layout changes (2: the header's TCP facts and connect records).
VERSION = 2
_VERSION = struct.Struct("<H")
_ENTRY = struct.Struct("<BI")
_COUNT = struct.Struct("<I")
_TIME = struct.Struct("<d")
_OFFSET = struct.Struct("<q")
_RESOURCE = struct.Struct("<QI")
# A length past this is corruption, not a batch (8192 records of a few KiB at most).
MAX_ENTRY_BYTES = 1 << 28
# Processes whose resource both sides remember; a pid that falls out is simply written again.
RESOURCE_TRAIL = 4096
# Buffered entries reach the file at least this often: what a killed otelbpf loses from its recording.
FLUSH_INTERVAL_S = 1.0


class Kind(enum.IntEnum):
    """What an entry holds."""

    META = 1  # JSON: the options that shape spans, the id seed, who recorded it
    BATCH = 2  # u32 n, n x u32 record length, the n records back to back: one drain
    TIME = 3  # f64: a monotonic time the pipeline read (the linker's "now")
    CLOCK = 4  # i64: the kernel-monotonic -> wall offset in ns, at start and when it changes
    RESOURCE = 5  # u64 resource lookup number, u32 pid, JSON [[key, value], ...]: a process's new resource
    END = 6  # JSON {"stats": kernel counters, "in_flight": requests}: what the exit summary read


class Entry(NamedTuple):
    """One entry read back, its payload decoded."""

    kind: Kind
    value: Any


class RecordingError(ValueError):
    """A file that cannot be replayed: not a recording, an unknown version, a corrupt entry."""


class ResourceTrail:
    """The resource last written for each pid, kept the same way on both sides so replay stays in step."""

    def __init__(self, capacity: int = RESOURCE_TRAIL) -> None:
        self._known: OrderedDict[int, Resource] = OrderedDict()
        self._capacity = capacity

    def get(self, pid: int) -> Resource | None:
        """The resource last written for ``pid``."""
        return self._known.get(pid)

    def set(self, pid: int, resource: Resource) -> None:
        """Remember a written resource; the oldest pid falls out past the capacity."""
        self._known[pid] = resource
        if len(self._known) > self._capacity:
            self._known.popitem(last=False)


# ---------------------------------------------------------------------------------------------- write


class Recorder:
    """Writes a recording while otelbpf runs. A failed write stops the recording, never the tracing."""

    def __init__(
        self, path: str | Path, monotonic: Callable[[], float] = time.monotonic, buffer_bytes: int = 1 << 20
    ) -> None:
        self.path = str(path)
        self._monotonic = monotonic
        self._file: BinaryIO | None = open(path, "wb", buffering=buffer_bytes)  # noqa: SIM115 - closed by close()
        self.error = ""
        self.records = 0
        self.batches = 0
        self.bytes = 0
        self._flushed_at = time.monotonic()
        self._write_raw(MAGIC + _VERSION.pack(VERSION))

    def start(self, meta: dict[str, Any], clock: ClockMap) -> None:
        """Write the options and the clock offset the spans start from, straight to the file."""
        self._write(Kind.META, json.dumps(meta, sort_keys=True).encode())
        self._write(Kind.CLOCK, _OFFSET.pack(clock.offset_ns))
        self._flush()

    def tap(self, records: list[bytes]) -> None:
        """Collector tap: write one drained batch, as drained."""
        n = len(records)
        lengths = struct.pack(f"<{n}I", *map(len, records))
        data = b"".join(records)
        if self._write(Kind.BATCH, _COUNT.pack(n), lengths, data):
            self.batches += 1
            self.records += n

    def clock(self) -> float:
        """Collector clock: the monotonic time, written down as the pipeline reads it."""
        now = self._monotonic()
        self._write(Kind.TIME, _TIME.pack(now))
        return now

    def clock_refresh(self, clock: ClockMap) -> Callable[[], None]:
        """A periodic job that refreshes ``clock`` and writes its new offset when it moved."""

        def refresh() -> None:
            before = clock.offset_ns
            clock.maybe_refresh()
            if clock.offset_ns != before:
                self._write(Kind.CLOCK, _OFFSET.pack(clock.offset_ns))

        return refresh

    def resources(self, cache: ResourceCache) -> RecordingResources:
        """``cache`` for the span builder, writing each resource it hands out for a pid the first time."""
        return RecordingResources(cache, self)

    def kernel(self, source: KernelSource) -> RecordingKernel:
        """``source`` for the collector, writing the counters its exit summary reads."""
        return RecordingKernel(source, self)

    def write_resource(self, call: int, pid: int, resource: Resource) -> None:
        """Write the resource that lookup number ``call`` returned for ``pid``."""
        self._write(Kind.RESOURCE, _RESOURCE.pack(call, pid), json.dumps(resource.attributes).encode())

    def write_end(self, stats: dict[str, int], in_flight: int) -> None:
        """Write the kernel counters the summary reports."""
        self._write(Kind.END, json.dumps({"stats": stats, "in_flight": in_flight}, sort_keys=True).encode())

    def close(self) -> None:
        """Flush and close; an error here is reported like any write error."""
        if self._file is None:
            return
        try:
            self._file.close()
        except OSError as exc:
            self._fail(exc)
        self._file = None

    def _write(self, kind: Kind, *parts: bytes) -> bool:
        size = sum(map(len, parts))
        return self._write_raw(_ENTRY.pack(kind, size), *parts)

    def _write_raw(self, *parts: bytes) -> bool:
        if self._file is None:
            return False
        try:
            for part in parts:
                self._file.write(part)
        except OSError as exc:
            self._fail(exc)
            return False
        self.bytes += sum(map(len, parts))
        if time.monotonic() - self._flushed_at >= FLUSH_INTERVAL_S:
            self._flush()
        return True

    def _flush(self) -> None:
        self._flushed_at = time.monotonic()
        if self._file is None:
            return
        try:
            self._file.flush()
        except OSError as exc:
            self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.error = f"recording to {self.path} stopped: {exc.strerror or exc}"
        logger.error("%s; tracing goes on, the recording ends at its last whole entry", self.error)
        file, self._file = self._file, None
        try:
            if file is not None:
                file.close()
        except OSError:
            pass  # the same failure again, while flushing what was buffered


class RecordingResources:
    """Wraps the live ResourceCache: writes a pid's resource whenever the one handed out changes."""

    def __init__(self, cache: ResourceCache, recorder: Recorder) -> None:
        self._cache = cache
        self._recorder = recorder
        self._trail = ResourceTrail()
        self._calls = 0

    def get(self, pid: int, comm: str = "") -> Resource:
        """The live cache's resource for ``pid``, written down if replay would not know it."""
        self._calls += 1
        resource = self._cache.get(pid, comm)
        known = self._trail.get(pid)
        if known is not resource and known != resource:
            self._trail.set(pid, resource)
            self._recorder.write_resource(self._calls, pid, resource)
        return resource

    def remember_exec(self, ev: ProcessEvent) -> None:
        """Pass an exec on to the live cache."""
        self._cache.remember_exec(ev)


class RecordingKernel:
    """Wraps the probes for the collector's summary: writes the counters it reads."""

    def __init__(self, source: KernelSource, recorder: Recorder) -> None:
        self._source = source
        self._recorder = recorder
        self._in_flight: int | None = None

    def read_stats(self) -> dict[str, int]:
        """The kernel's counters, written down with the requests still in flight."""
        stats = self._source.read_stats()
        self._in_flight = self._source.in_flight_requests()
        self._recorder.write_end(stats, self._in_flight)
        return stats

    def in_flight_requests(self) -> int:
        """Requests in flight, as written with the counters."""
        return self._in_flight if self._in_flight is not None else self._source.in_flight_requests()


# ----------------------------------------------------------------------------------------------- read


class RecordingReader:
    """Reads a recording back one entry at a time; a file cut mid-entry ends at its last whole entry.

    A corrupt entry ends the entries too, with ``error`` set: the reader's caller may be deep in the
    pipeline (a resource lookup), where an exception would be taken for a bug in one span.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self.truncated = False
        self.error = ""
        self.entries = 0
        try:
            self._file: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise RecordingError(f"cannot read {path}: {exc.strerror or exc}") from exc
        head = self._file.read(len(MAGIC) + _VERSION.size)
        if len(head) < len(MAGIC) + _VERSION.size or not head.startswith(MAGIC):
            self._file.close()
            raise RecordingError(f"{path} is not an otelbpf recording")
        (version,) = _VERSION.unpack_from(head, len(MAGIC))
        if version != VERSION:
            self._file.close()
            raise RecordingError(f"{path} is an otelbpf recording of format {version}; this otelbpf reads {VERSION}")

    def __enter__(self) -> RecordingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file."""
        self._file.close()

    def __iter__(self) -> Iterator[Entry]:
        read = self._file.read
        while head := read(_ENTRY.size):
            payload = b""
            if len(head) == _ENTRY.size:
                kind, size = _ENTRY.unpack(head)
                if size > MAX_ENTRY_BYTES:
                    self.error = f"{self.path}: entry {self.entries + 1} claims {size} bytes: corrupt"
                    return
                payload = read(size)
            if len(head) < _ENTRY.size or len(payload) < size:
                self.truncated = True
                logger.warning(
                    "%s is cut short after %d whole entries (otelbpf stopped mid-write): replaying those",
                    self.path,
                    self.entries,
                )
                return
            try:
                entry = _decode(kind, payload)
            except (struct.error, ValueError) as exc:
                self.error = f"{self.path}: entry {self.entries + 1} is corrupt: {exc}"
                return
            self.entries += 1
            yield entry


def _decode(kind: int, payload: bytes) -> Entry:
    try:
        if kind == Kind.BATCH:
            (n,) = _COUNT.unpack_from(payload)
            lengths = struct.unpack_from(f"<{n}I", payload, _COUNT.size)
            records = []
            at = _COUNT.size + 4 * n
            for length in lengths:
                records.append(payload[at : at + length])
                at += length
            if at != len(payload):
                raise ValueError("record lengths do not add up to the batch")
            return Entry(Kind.BATCH, records)
        if kind == Kind.TIME:
            return Entry(Kind.TIME, _TIME.unpack(payload)[0])
        if kind == Kind.CLOCK:
            return Entry(Kind.CLOCK, _OFFSET.unpack(payload)[0])
        if kind == Kind.RESOURCE:
            call, pid = _RESOURCE.unpack_from(payload)
            # JSON has no tuples: string arrays come back as lists.
            items = json.loads(payload[_RESOURCE.size :])
            attributes = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in items)
            return Entry(Kind.RESOURCE, (call, pid, Resource(attributes)))
        if kind in (Kind.META, Kind.END):
            return Entry(Kind(kind), json.loads(payload))
    except (struct.error, ValueError) as exc:
        raise ValueError(f"{Kind(kind).name.lower()} entry: {exc}") from exc
    raise ValueError(f"unknown entry kind {kind}")
