"""The run loop: ring buffer -> decode -> spans -> export queue, and the end-of-run summary."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from otelbpf.correlate import SpanBuilder, UnknownProtocol
from otelbpf.events import EVENT_CONNECT, EVENT_PROCESS, DecodeError, decode, decode_connect, decode_process
from otelbpf.export import BatchQueue
from otelbpf.linking import TraceLinker
from otelbpf.metrics import RequestMetrics
from otelbpf.spans import Span

logger = logging.getLogger(__name__)


class KernelSource(Protocol):
    """What the loop needs from the probes (kept abstract so bcc stays in probes.py)."""

    def read_stats(self) -> dict[str, int]: ...

    def in_flight_requests(self) -> int: ...


@dataclass
class Health:
    """otelbpf's own counters at one moment: what the exit summary prints and the self-metrics report."""

    kernel: dict[str, int]
    requests_seen: int
    spans_built: int
    spans_exported: int
    queued: int  # accepted by the export queue, not yet settled
    lost: dict[str, int]  # by LOSS_REASONS key; "evicted" only when the in-flight requests were counted
    unfinished: int  # requests neither finished nor lost by the kernel's count: in flight, or evicted
    records: int  # ring-buffer records the collector took
    record_bytes: int


class RecordReader(Protocol):
    """Where records come from: the kernel's ring buffer (ringbuf.RingBufferReader), or a recording."""

    def drain(self, limit: int) -> list[bytes]: ...

    def wait(self, timeout_s: float) -> None: ...


@dataclass
class Summary:
    """Everything the user is told at exit: what was seen, what was exported, what was lost and why."""

    requests_seen: int = 0
    spans_built: int = 0
    spans_exported: int = 0
    destination: str = ""
    lost: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def lost_total(self) -> int:
        """All events lost, whatever the reason."""
        return sum(self.lost.values())

    def format(self) -> str:
        """Multi-line text for stderr."""
        lines = [
            "otelbpf summary:",
            f"  requests seen:   {self.requests_seen}",
            f"  spans exported:  {self.spans_exported} ({self.destination})",
            f"  events lost:     {self.lost_total}",
        ]
        for reason, n in self.lost.items():
            lines.append(f"    {reason + ':':<52} {n}")
        for what, n in self.notes.items():
            if n:
                lines.append(f"  {what + ':':<54} {n}")
        return "\n".join(lines)


# Why an event can be lost, in the words the summary uses.
LOSS_REASONS = {
    "lost_ringbuf_full": "ring buffer full (collector too slow)",
    "sampled_out": "shed in the kernel (rate limit, CPUs saturated)",
    "queue_full": "export queue full",
    "export_failed": "export failed after retries",
    "shutdown": "unexported at shutdown",
    "malformed": "malformed kernel records",
    "evicted": "evicted in flight (connection table full)",
}


class Collector:
    """Drains the kernel ring buffer in batches and feeds spans to the export queue."""

    def __init__(
        self,
        source: KernelSource,
        reader: RecordReader,
        builder: SpanBuilder,
        queue: BatchQueue,
        capture_bytes: int,
        resp_capture_bytes: int = 256,
        poll_interval_s: float = 0.1,
        max_batch: int = 8192,
        periodic: list[tuple[float, Callable[[], None]]] | None = None,
        linker: TraceLinker | None = None,
        tap: Callable[[list[bytes]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        metrics: RequestMetrics | None = None,
    ) -> None:
        self._source = source
        self._reader = reader
        self._builder = builder
        self._queue = queue
        self._capture = capture_bytes
        self._resp_capture = resp_capture_bytes
        self._poll_s = poll_interval_s
        self._max_batch = max_batch
        # (interval, job): clock refresh, target rescans, the load governor.
        self._periodic = periodic or []
        # None: spans go straight out, each its own trace unless it carried a traceparent.
        self._linker = linker
        # Recording: sees each drained batch first; ``clock`` gives the linker's "now" (record and replay swap it).
        self._tap = tap
        self._clock = clock
        self.spans_built = 0
        # Spans per process since the load governor last looked: which processes to watch.
        self.active_pids: Counter[int] = Counter()
        self.malformed = 0
        self.build_errors = 0
        # Request-duration histograms, fed every span on its way to the queue (None: no metrics).
        self._metrics = metrics
        self.records_taken = 0
        self.record_bytes = 0

    def process_once(self) -> int:
        """Handle whatever the kernel has written; return the number of records taken."""
        records = self._reader.drain(self._max_batch)
        if not records:
            return 0
        if self._tap is not None:
            self._tap(records)
        self.records_taken += len(records)
        self.record_bytes += sum(map(len, records))
        spans = []
        pids = []
        build = self._builder.build
        linker = self._linker
        now = self._clock()
        for raw in records:
            kind = raw[0] if raw else -1
            try:
                if kind == EVENT_PROCESS:
                    self._builder.resources.remember_exec(decode_process(raw))
                    continue
                if kind == EVENT_CONNECT:
                    ev = decode_connect(raw)
                else:
                    ev = decode(raw, self._capture, self._resp_capture)
            except DecodeError as exc:
                self.malformed += 1
                if self.malformed == 1 or self.malformed % 1000 == 0:
                    logger.warning("malformed kernel record (%d so far): %s", self.malformed, exc)
                continue
            try:
                span = self._builder.build_connect(ev) if kind == EVENT_CONNECT else build(ev)
                if span is None:
                    continue  # a handshake: it told a protocol module about the connection, nothing more
                if linker is not None:
                    linker.add(span, ev, now)
                else:
                    spans.append(span)
                pids.append(ev.pid)
            except UnknownProtocol as exc:
                self.malformed += 1
                if self.malformed == 1 or self.malformed % 1000 == 0:
                    logger.warning("malformed kernel record (%d so far): %s", self.malformed, exc)
            except Exception:  # a bug here must cost one span, not the collector
                self.build_errors += 1
                self.malformed += 1
                if self.build_errors == 1:
                    logger.exception("failed to build a span from a kernel record")
        if pids:
            self.spans_built += len(pids)
            self.active_pids.update(pids)  # counted in C, once per batch
        if linker is not None:
            spans = linker.take_early()
        if spans:
            self._send(spans)
        return len(records)

    def release_linked(self, flush: bool = False) -> None:
        """Send the trees the linker is done holding (all of them when flushing)."""
        if self._linker is None:
            return
        now = self._clock()
        if flush:
            self._send(self._linker.flush(now), waiting=True)
            return
        ready = self._linker.take_ready(now)
        if ready:
            self._send(ready)

    def _send(self, spans: list[Span], waiting: bool = False) -> None:
        """Count spans into the metrics (whether the queue takes them or not), then queue them."""
        if self._metrics is not None:
            self._metrics.record(spans)
        if waiting:
            self._queue.submit_waiting(spans)
        else:
            self._queue.submit(spans)

    def run(self, stop: threading.Event, duration_s: float | None = None) -> None:
        """Loop until ``stop`` is set or the duration passes, then drain what is left."""
        deadline = None if not duration_s else time.monotonic() + duration_s
        due = [time.monotonic() + interval for interval, _ in self._periodic]
        while not stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait = self._poll_s if deadline is None else max(0.0, min(self._poll_s, deadline - now))
            self._reader.wait(wait)
            while self.process_once() >= self._max_batch:
                pass  # keep up with a burst before sleeping again
            self.release_linked()
            for i, (interval, job) in enumerate(self._periodic):
                if now >= due[i]:
                    due[i] = now + interval
                    try:
                        job()
                    except Exception:
                        logger.exception("periodic job %s failed", getattr(job, "__name__", job))
        # Requests that finished just before the stop are still in the ring: take them all.
        while self.process_once():
            pass
        self.release_linked(flush=True)

    def _link_notes(self) -> dict[str, int]:
        if self._linker is None:
            return {}
        st = self._linker.stats
        return {
            "parents from traceparent headers": self._builder.stats.traceparents,
            "parents found by thread": st.thread,
            "  of which on an event loop (best effort)": st.event_loop,
            "parents found by connection 4-tuple": st.connection,
            "spans given links instead of a parent (ambiguous)": st.ambiguous,
            "spans exported before their parent (reserved ids)": st.reserved,
            "reserved parents never seen (shed, lost or still running)": st.parents_never_seen,
            "links instead of parents (ids already fixed)": st.late_links,
            "spans released before their window (hold buffer full)": st.released_early,
            "parents not held (placeholder table full)": st.no_room,
        }

    def take_active_pids(self, most: int = 16) -> list[int]:
        """The processes that produced the most spans since the last call (and reset the count)."""
        active, self.active_pids = self.active_pids, Counter()
        return [pid for pid, _ in active.most_common(most)]

    def health(self, source: KernelSource | None = None, count_in_flight: bool = False) -> Health:
        """The counters of the kernel (``source``, default the collector's own), the builder and the queue.

        ``count_in_flight`` walks the kernel's connection table to tell requests in flight from evicted
        ones: done at exit only, since a walk of a table that changes under it can restart over and over.
        """
        kernel = (source or self._source).read_stats()
        qstats = self._queue.stats()
        lost = {
            "lost_ringbuf_full": kernel.get("lost_ringbuf_full", 0),
            "sampled_out": kernel.get("sampled_out", 0),
            "queue_full": qstats.dropped.get("queue_full", 0),
            "export_failed": qstats.dropped.get("export_failed", 0),
            "shutdown": qstats.dropped.get("shutdown", 0),
            "malformed": self.malformed,
        }
        finished = kernel.get("events", 0) + kernel.get("lost_ringbuf_full", 0) + kernel.get("sampled_out", 0)
        unfinished = max(0, kernel.get("requests", 0) - finished)
        if count_in_flight:
            # A request neither finished nor still in the table was evicted with its connection's state
            # (the LRU table was full): the kernel cannot count that itself, so it is counted here.
            in_flight = min(unfinished, (source or self._source).in_flight_requests()) if unfinished else 0
            lost["evicted"] = unfinished - in_flight
            unfinished = in_flight
        return Health(
            kernel=kernel,
            requests_seen=kernel.get("requests", 0),
            spans_built=self.spans_built,
            spans_exported=qstats.exported,
            queued=qstats.queued,
            lost=lost,
            unfinished=unfinished,
            records=self.records_taken,
            record_bytes=self.record_bytes,
        )

    def summary(self, destination: str, extra_notes: dict[str, int] | None = None) -> Summary:
        """Counters from the kernel, the builder and the queue, put together."""
        health = self.health(count_in_flight=True)
        kernel = health.kernel
        lost = {LOSS_REASONS[reason]: n for reason, n in health.lost.items()}
        in_flight = health.unfinished
        notes = {
            "requests unfinished at exit": in_flight,
            "responses with no tracked request": kernel.get("orphan_responses", 0),
            "requests with unparsable heads": self._builder.stats.unparsed_requests,
            "records without a span (handshakes, prepare-only round trips)": self._builder.stats.no_span,
            "invalid traceparent headers (new trace started)": self._builder.stats.invalid_traceparents,
            "user-memory read faults": kernel.get("read_faults", 0),
            "processes not added (target table full)": kernel.get("targets_full", 0),
            "syscalls untracked (in-flight table full)": kernel.get("io_table_full", 0),
            "ring-buffer writes retried (then delivered or lost)": kernel.get("ringbuf_retried", 0),
            "TLS uprobe hits (all processes)": kernel.get("tls_probe_hits", 0),
            "TLS calls without a known socket": kernel.get("tls_unbound", 0),
            "TLS sessions tied to the thread's last TLS socket (memory BIO)": kernel.get("tls_guessed", 0),
            "TLS socket guesses corrected": kernel.get("tls_rebound", 0),
            "TLS calls untracked (in-flight table full)": kernel.get("tls_table_full", 0),
            "connections from otelbpf's own export (not traced)": kernel.get("own_conns", 0),
            "failed connects (connect spans; counted among the requests)": kernel.get("connect_failures", 0),
            **self._link_notes(),
            **(extra_notes or {}),
        }
        return Summary(
            requests_seen=health.requests_seen,
            spans_built=health.spans_built,
            spans_exported=health.spans_exported,
            destination=destination,
            lost=lost,
            notes=notes,
        )
