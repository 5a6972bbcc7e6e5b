"""``otelbpf replay``: a recording (recording.py) through the same collector, offline, giving the same spans.

No root, no kernel, no bcc and no /proc: the ring buffer, the clock the linker reads, the resources
and the kernel's counters are all stand-ins that hand back what the recording holds. The driver
calls the collector the way its run loop did while recording: one ``process_once`` per recorded
batch, one ``release_linked`` per clock read no batch claimed, then the final flush.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any

from otelbpf import __version__
from otelbpf.clock import ClockMap
from otelbpf.collector import Collector
from otelbpf.correlate import IdGenerator, SpanBuilder
from otelbpf.events import ProcessEvent
from otelbpf.recording import Entry, Kind, RecordingError, RecordingReader, ResourceTrail
from otelbpf.runner import RunError, export_queue, install_signal_handlers, linker_for
from otelbpf.spans import Resource

logger = logging.getLogger(__name__)


class EntryStream:
    """Entries with a short look-ahead: the replay's pieces each take the entries meant for them."""

    def __init__(self, entries: Iterator[Entry]) -> None:
        self._entries = iter(entries)
        self._ahead: deque[Entry] = deque()

    def peek(self, n: int = 0) -> Entry | None:
        """The entry ``n`` places ahead, without taking it; None past the end."""
        while len(self._ahead) <= n:
            entry = next(self._entries, None)
            if entry is None:
                return None
            self._ahead.append(entry)
        return self._ahead[n]

    def pop(self) -> Entry | None:
        """Take the next entry."""
        return self._ahead.popleft() if self.peek() is not None else None

    def take(self, kind: Kind) -> Any:
        """Take the next entry's value if it is of ``kind``; else None and the entry stays."""
        entry = self.peek()
        if entry is None or entry.kind != kind:
            return None
        self._ahead.popleft()
        return entry.value


class ReplaySource:
    """Stands in for the ring buffer and for the clock the collector reads."""

    def __init__(self, stream: EntryStream) -> None:
        self._stream = stream
        self._batch: list[bytes] = []
        self.now = 0.0

    def feed(self, records: list[bytes]) -> None:
        """The batch the next ``drain`` returns."""
        self._batch = records

    def drain(self, limit: int = 65536) -> list[bytes]:
        """The batch as recorded (the recording run drained it with the same limit)."""
        batch, self._batch = self._batch, []
        return batch

    def wait(self, timeout_s: float) -> None:
        """Nothing to wait for: the recording is all there."""

    def clock(self) -> float:
        """The next recorded time (the last one again once the recording has none left here)."""
        now = self._stream.take(Kind.TIME)
        if now is not None:
            self.now = now
        return self.now


class ReplayResources:
    """Stands in for the ResourceCache: each pid's resource as recorded, switched at the recorded lookup."""

    def __init__(self, stream: EntryStream) -> None:
        self._stream = stream
        self._trail = ResourceTrail()
        self._calls = 0
        self.missing = 0

    def add(self, call: int, pid: int, resource: Resource) -> None:
        """A recorded resource, in force from lookup number ``call``."""
        self._trail.set(pid, resource)

    def get(self, pid: int, comm: str = "") -> Resource:
        """The resource the recording run handed out for this lookup."""
        self._calls += 1
        while (entry := self._stream.peek()) is not None and entry.kind is Kind.RESOURCE:
            if entry.value[0] > self._calls:
                break
            self._stream.pop()
            self.add(*entry.value)
        resource = self._trail.get(pid)
        if resource is None:  # only a recording cut short lacks one
            self.missing += 1
            resource = Resource((("process.pid", pid), ("service.name", comm or f"unknown_service:{pid}")))
            self._trail.set(pid, resource)
        return resource

    def remember_exec(self, ev: ProcessEvent) -> None:
        """Nothing to do: the resources built after the exec are in the recording."""


class RecordedKernel:
    """Stands in for the probes in the summary: the counters as the recording run read them at exit."""

    def __init__(self) -> None:
        self.stats: dict[str, int] = {}
        self.in_flight = 0

    def update(self, end: dict[str, Any]) -> None:
        """Take an END entry."""
        self.stats = {k: int(v) for k, v in end.get("stats", {}).items()}
        self.in_flight = int(end.get("in_flight", 0))

    def read_stats(self) -> dict[str, int]:
        """The recorded kernel counters (empty when the recording was cut short)."""
        return dict(self.stats)

    def in_flight_requests(self) -> int:
        """The recorded number of requests in flight at exit."""
        return self.in_flight


class Replayer:
    """One recording, wired into a Collector exactly as ``otelbpf record`` wired the live run."""

    def __init__(self, reader: RecordingReader, queue: Any) -> None:
        self.stream = EntryStream(reader)
        meta = self.stream.take(Kind.META)
        if meta is None:
            raise RecordingError(f"{reader.path} has no header entry")
        self.meta: dict[str, Any] = meta
        self.source = ReplaySource(self.stream)
        self.resources = ReplayResources(self.stream)
        self.kernel = RecordedKernel()
        self.ended = False
        self.batches = 0
        ids = IdGenerator(int(meta["seed"]))
        # The offset comes from the recording; no clock is read here.
        self.clock = ClockMap(realtime_ns=lambda: 0, monotonic_ns=lambda: 0)
        builder = SpanBuilder(
            self.resources,  # type: ignore[arg-type]  # the same get/remember_exec interface
            self.clock,
            ids=ids,
            capture_query=bool(meta["capture_query"]),
            raw_db_query_text=bool(meta["raw_db_query_text"]),
        )
        options = argparse.Namespace(
            link_window=float(meta["link_window"]),
            link_max_hold=float(meta["link_max_hold"]),
            link_max_spans=int(meta["link_max_spans"]),
        )
        self.collector = Collector(
            self.kernel,
            self.source,
            builder,
            queue,
            int(meta["capture_bytes"]),
            int(meta["resp_capture_bytes"]),
            linker=linker_for(options, ids),
            clock=self.source.clock,
        )

    def run(self, stop: threading.Event | None = None, speed: float = 0.0) -> None:
        """Feed every entry to the collector; ``speed`` 1 keeps the recorded pace, 0 goes as fast as it can."""
        stream, collector = self.stream, self.collector
        pace = _Pace(speed)
        while (entry := stream.peek()) is not None and not (stop is not None and stop.is_set()):
            kind = entry.kind
            if kind is Kind.BATCH:
                stream.pop()
                after = stream.peek()
                if after is not None and after.kind is Kind.TIME:
                    pace.wait_until(after.value)
                self.source.feed(entry.value)
                collector.process_once()
                self.batches += 1
            elif kind is Kind.TIME:
                # A clock read no batch claimed: the run loop releasing what the linker held. The last
                # one before the end entry is the final flush.
                after = stream.peek(1)
                pace.wait_until(entry.value)
                collector.release_linked(flush=after is None or after.kind is Kind.END)
                if stream.peek() is entry:  # not read (no linker): skip it
                    stream.pop()
            elif kind is Kind.CLOCK:
                stream.pop()
                self.clock.offset_ns = entry.value
            elif kind is Kind.RESOURCE:
                stream.pop()
                self.resources.add(*entry.value)
            elif kind is Kind.END:
                stream.pop()
                self.kernel.update(entry.value)
                self.ended = True
            else:
                stream.pop()  # a second header: nothing in it changes spans already made
        collector.release_linked(flush=True)  # only a recording cut short holds anything here


class _Pace:
    """Sleeps so that recorded times pass at ``speed`` times their recorded rate (0: no sleeping)."""

    def __init__(self, speed: float) -> None:
        self._speed = speed
        self._start: tuple[float, float] | None = None

    def wait_until(self, recorded: float) -> None:
        if self._speed <= 0:
            return
        if self._start is None:
            self._start = (recorded, time.monotonic())
            return
        due = self._start[1] + (recorded - self._start[0]) / self._speed
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def replay(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """``otelbpf replay FILE``: export a recording's spans again; return the exit code."""
    if args.speed < 0:
        raise RunError(f"--speed must be 0 (as fast as possible) or more, got {args.speed:g}")
    try:
        reader = RecordingReader(args.file)
    except RecordingError as exc:
        raise RunError(str(exc)) from exc
    with reader:
        queue, destination = export_queue(args, env)
        try:
            replayer = Replayer(reader, queue)
        except RecordingError as exc:
            queue.shutdown(1.0)
            raise RunError(str(exc)) from exc
        except (KeyError, TypeError, ValueError) as exc:
            queue.shutdown(1.0)
            raise RunError(f"{args.file}: unusable header entry: {exc!r}") from exc
        meta = replayer.meta
        print(
            f"otelbpf: replaying {args.file} (recorded by otelbpf {meta.get('otelbpf', '?')} on "
            f"{meta.get('host', '?')}); exporting to {destination}",
            file=sys.stderr,
            flush=True,
        )
        if meta.get("otelbpf") != __version__:
            logger.warning("recorded by otelbpf %s, replayed by %s: spans may differ", meta.get("otelbpf"), __version__)
        stop = threading.Event()
        install_signal_handlers(stop)
        replayer.run(stop, args.speed)
        queue.shutdown(timeout_s=10.0)
    if reader.error:
        # What came before the corrupt entry went out; the summary would describe half a run.
        raise RunError(f"{reader.error} (the {reader.entries} entries before it were replayed)")
    if not replayer.ended and not reader.truncated and not stop.is_set():
        logger.warning("%s has no end entry: the kernel's counters are missing from the summary", args.file)
    notes = {
        "recorded batches replayed": replayer.batches,
        "resources missing from the recording": replayer.resources.missing,
    }
    summary = replayer.collector.summary(destination, notes)
    print(summary.format(), file=sys.stderr, flush=True)
    return 0
