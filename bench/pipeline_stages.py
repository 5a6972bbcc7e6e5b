"""Benchmark: the collector pipeline stage by stage, from a recording (no root needed).

Run:  .venv/bin/python bench/pipeline_stages.py [--recording FILE]      (or: make bench-pipeline)

Without --recording, a recording is made first, through the same wiring as ``otelbpf record``, of
synthetic nginx-like traffic: a client making keep-alive ``GET /index.html HTTP/1.1`` requests (Host,
User-Agent, Accept) to nginx on a few connections, both ends traced, so each request is a server
record and a client record that the linker joins by connection.

It reports, per span:
  * each stage alone over the whole recording: decode (events.decode), build (SpanBuilder.build), link
    (TraceLinker, with the recorded clock), metrics (RequestMetrics.record, the request-duration
    histograms, 512 spans a call), encode (export.encode_spans, 512 spans a request), export
    (gRPC to bench/span_counter.py, a real receiver in its own process, 512 spans a request);
  * the whole pipeline: the recording replayed into a Collector, export queue, gRPC;
  * fixed and per-span cost of each stage: calls of 1, 10, 100, 1000 and 8192 spans, fitted to
    cost = fixed + n x per-span (least squares on relative error);
  * one core's worth: the collector (Collector.run, export queue, gRPC) pinned to one CPU, fed by a
    stand-in ring buffer that fills at a fixed rate and loses what does not fit (4 MiB, as the
    kernel's), the receiver pinned to another; the highest rate with zero loss: every record read,
    every span exported, none dropped by the queue.
Times are CPU time of this process (all its threads: gRPC's too) unless marked wall. The table is
printed as markdown; nothing is written to docs/.
"""

from __future__ import annotations

import argparse
import collections
import functools
import gc
import math
import os
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otelbpf import __version__, events  # noqa: E402
from otelbpf.cli import parse_args  # noqa: E402
from otelbpf.clock import ClockMap  # noqa: E402
from otelbpf.correlate import IdGenerator, SpanBuilder  # noqa: E402
from otelbpf.export import ExportQueue, ExportStats, GrpcExporter, encode_spans  # noqa: E402
from otelbpf.metrics import RequestMetrics  # noqa: E402
from otelbpf.recording import Kind, Recorder, RecordingReader  # noqa: E402
from otelbpf.replay import Replayer  # noqa: E402
from otelbpf.runner import linker_for, pipeline  # noqa: E402
from otelbpf.spans import Resource  # noqa: E402
from tests.factories import http_event, process_record_bytes, record_bytes, v4  # noqa: E402

COUNTER = ROOT / "bench" / "span_counter.py"
SIZES = (1, 10, 100, 1000, 8192)
EXPORT_BATCH = 512
RING_BYTES = 1024 * 4096  # the kernel ring's default: 1024 pages
# Above any pid_max (2^22): no /proc entry, so the resources come from the exec records, as for a process gone.
NGINX_PID, CLIENT_PID = 4_200_001, 4_200_002
HEAD = (
    b"GET /index.html HTTP/1.1\r\nHost: localhost:8080\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n\r\n"
)
T0_NS = 1_000_000_000_000
_START, _END, _CAUSE = (events.HEADER_LAYOUT[k][0] for k in ("start_ns", "end_ns", "cause_ns"))


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the synthetic recording


def traffic(requests: int, connections: int, rate: float) -> Iterator[tuple[int, bytes]]:
    """(kernel ns when written, record) in the order the kernel writes them."""
    yield T0_NS, process_record_bytes(NGINX_PID, "nginx", "/usr/sbin/nginx", ["nginx: worker process"])
    yield T0_NS, process_record_bytes(CLIENT_PID, "client", "/usr/bin/python3", ["python3", "client.py"])
    local = v4("127.0.0.1")
    for i in range(requests):
        c = i % connections
        start = T0_NS + int((i + 1) * 1e9 / rate)
        common = dict(local_addr=local, peer_addr=local, req=HEAD, status=200, sock_id=0xFFFF0000 + c)
        server = http_event(
            pid=NGINX_PID, tid=NGINX_PID, start_ns=start + 20_000, end_ns=start + 100_000, bytes_in=len(HEAD),
            bytes_out=853, local_port=8080, peer_port=40_000 + c, comm="nginx", **common,
        )  # fmt: skip
        client = http_event(
            pid=CLIENT_PID, tid=CLIENT_PID + 1 + c, role=events.ROLE_CLIENT, start_ns=start,
            end_ns=start + 120_000, bytes_in=853, bytes_out=len(HEAD), local_port=40_000 + c, peer_port=8080,
            comm="client", **common,
        )  # fmt: skip
        yield server.end_ns, record_bytes(server)  # the server's response ends its request first
        yield client.end_ns, record_bytes(client)


class Feeder:
    """A ring buffer stand-in that hands out whatever batch it was last given."""

    def __init__(self) -> None:
        self.batch: list[bytes] = []

    def drain(self, limit: int) -> list[bytes]:
        batch, self.batch = self.batch, []
        return batch

    def wait(self, timeout_s: float) -> None:
        pass


class NullQueue:
    """An export queue that counts spans and drops them."""

    def __init__(self) -> None:
        self.spans = 0

    def submit(self, spans: list) -> int:
        self.spans += len(spans)
        return len(spans)

    def submit_waiting(self, spans: list, timeout_s: float = 10.0) -> int:
        return self.submit(spans)

    def stats(self) -> ExportStats:
        return ExportStats(exported=self.spans)


class Kernel:
    """The probes' counters for the summary: nothing lost."""

    def __init__(self, requests: int = 0) -> None:
        self.requests = requests

    def read_stats(self) -> dict[str, int]:
        return {"requests": self.requests, "events": self.requests}

    def in_flight_requests(self) -> int:
        return 0


def synthesize(path: Path, requests: int, connections: int, rate: float, batch_ms: float = 5.0) -> None:
    """Record the synthetic traffic through ``otelbpf record``'s wiring, on a simulated clock: each drain
    takes ``batch_ms`` of records, and the linker sees them 1 ms after the last one was written."""
    now = [T0_NS / 1e9]
    recorder = Recorder(path, monotonic=lambda: now[0])
    ring, queue = Feeder(), NullQueue()
    args = parse_args(["record", str(path)], {})
    clock = ClockMap(realtime_ns=lambda: 1_750_000_000_000_000_000, monotonic_ns=lambda: T0_NS)
    collector = pipeline(args, {}, Kernel(2 * requests), ring, queue, 20250, recorder, clock=clock)
    step = int(batch_ms * 1e6)
    batch: list[bytes] = []
    due = T0_NS + step
    for written, raw in traffic(requests, connections, rate):
        if written >= due and batch:
            now[0] = (due + 1_000_000) / 1e9
            ring.batch, batch = batch, []
            collector.process_once()
            collector.release_linked()
            due += step * max(1, math.ceil((written - due) / step))
        batch.append(raw)
    ring.batch = batch
    collector.process_once()
    now[0] += 1.0
    collector.release_linked(flush=True)
    collector.summary("synthetic")
    recorder.close()


# ---------------------------------------------------------------- reading a recording back


class Recording:
    """What the stages need from a recording: batches with their clock, resources, options."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.batches: list[tuple[float, list[bytes]]] = []
        self.resources: dict[int, Resource] = {}
        self.offset_ns = 0
        with RecordingReader(path) as reader:
            entries = list(reader)
        self.meta = entries[0].value
        for i, entry in enumerate(entries):
            if entry.kind is Kind.BATCH:
                nxt = entries[i + 1] if i + 1 < len(entries) else None
                self.batches.append((nxt.value if nxt and nxt.kind is Kind.TIME else 0.0, entry.value))
            elif entry.kind is Kind.RESOURCE:
                self.resources.setdefault(entry.value[1], entry.value[2])
            elif entry.kind is Kind.CLOCK and not self.offset_ns:
                self.offset_ns = entry.value
        self.records = [raw for _, batch in self.batches for raw in batch]

    def builder(self) -> SpanBuilder:
        """A span builder as the recording run had it (its first resources and clock offset)."""
        clock = ClockMap(realtime_ns=lambda: 0, monotonic_ns=lambda: 0)
        clock.offset_ns = self.offset_ns
        return SpanBuilder(
            StaticResources(self.resources), clock, ids=IdGenerator(self.meta["seed"]),  # type: ignore[arg-type]
            capture_query=self.meta["capture_query"], raw_db_query_text=self.meta["raw_db_query_text"],
        )  # fmt: skip

    def linker_args(self) -> argparse.Namespace:
        return argparse.Namespace(**{k: self.meta[k] for k in ("link_window", "link_max_hold", "link_max_spans")})


class StaticResources:
    def __init__(self, resources: dict[int, Resource]) -> None:
        self._resources = resources

    def get(self, pid: int, comm: str = "") -> Resource:
        return self._resources.get(pid) or Resource((("process.pid", pid), ("service.name", comm)))

    def remember_exec(self, ev: object) -> None:
        pass


class RecordPool:
    """The recording's request records, cycled without end: each round shifted past the last in kernel time."""

    def __init__(self, records: list[bytes]) -> None:
        self._records = [r for r in records if r[0] == events.EVENT_REQUEST]
        starts = [struct.unpack_from("<Q", r, _START)[0] for r in self._records]
        ends = [struct.unpack_from("<Q", r, _END)[0] for r in self._records]
        self._period = max(ends) - min(starts) + 1_000_000
        self._next = 0

    def take(self, n: int) -> list[bytes]:
        out = []
        size = len(self._records)
        for _ in range(n):
            rnd, i = divmod(self._next, size)
            self._next += 1
            raw = self._records[i]
            if rnd:
                buf = bytearray(raw)
                delta = rnd * self._period
                for off in (_START, _END, _CAUSE):
                    value = struct.unpack_from("<Q", buf, off)[0]
                    if value:
                        struct.pack_into("<Q", buf, off, value + delta)
                raw = bytes(buf)
            out.append(raw)
        return out


# ---------------------------------------------------------------- stage measurements


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """(CPU s, wall s) of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c0, time.perf_counter() - w0


class Stages:
    """Each stage as a function of a batch of n items, with the inputs it needs made beforehand."""

    def __init__(self, rec: Recording, endpoint: str) -> None:
        self.rec = rec
        self.capture = (rec.meta["capture_bytes"], rec.meta["resp_capture_bytes"])
        self.exporter = GrpcExporter(endpoint)

    def decode(self, records: list[bytes]) -> list:
        cap, resp = self.capture
        return [events.decode(raw, cap, resp) for raw in records if raw[0] == events.EVENT_REQUEST]

    def build(self, builder: SpanBuilder, evs: list) -> list:
        return [(span, ev) for ev in evs if (span := builder.build(ev)) is not None]

    def link(self, linker, pairs: list, now: float) -> list:  # noqa: ANN001 - a TraceLinker
        for span, ev in pairs:
            linker.add(span, ev, now)
        return linker.take_early() + linker.take_ready(now)

    def encode(self, spans: list) -> bytes:
        return encode_spans(spans, __version__)

    def export(self, payload: bytes, n: int) -> None:
        self.exporter.export(payload, n)

    def bulk(self) -> dict[str, tuple[float, float, int]]:
        """Each stage over the whole recording: name -> (CPU s, wall s, spans)."""
        rec = self.rec
        out: dict[str, tuple[float, float, int]] = {}
        evs: list = []
        out["decode"] = (*timed(lambda: evs.extend(self.decode(rec.records))), len(evs))
        builder = rec.builder()
        pairs: list = []
        out["build"] = (*timed(lambda: pairs.extend(self.build(builder, evs))), len(pairs))
        linker = linker_for(rec.linker_args(), IdGenerator(1))
        by_batch = []  # the built spans regrouped as the recording drained them
        at = 0
        for now, batch in rec.batches:
            n = sum(1 for raw in batch if raw[0] == events.EVENT_REQUEST)
            by_batch.append((now, pairs[at : at + n]))
            at += n
        spans: list = []

        def link_all() -> None:
            last = 0.0
            for now, group in by_batch:
                spans.extend(self.link(linker, group, now))
                last = max(last, now)
            spans.extend(linker.flush(last + 60.0))

        out["link"] = (*timed(link_all), len(spans))
        chunks = [spans[i : i + EXPORT_BATCH] for i in range(0, len(spans), EXPORT_BATCH)]
        metrics = RequestMetrics()
        out["metrics"] = (*timed(lambda: [metrics.record(c) for c in chunks]), len(spans))
        payloads: list[bytes] = []
        out["encode"] = (*timed(lambda: payloads.extend(self.encode(c) for c in chunks)), len(spans))

        def export_all() -> None:
            for payload, chunk in zip(payloads, chunks, strict=True):
                self.export(payload, len(chunk))

        out["export"] = (*timed(export_all), len(spans))
        return out

    def fits(self) -> dict[str, tuple[float, float]]:
        """name -> (fixed µs a call, µs a span) from calls of each size in SIZES."""
        pool = RecordPool(self.rec.records)
        points: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
        for n in SIZES:
            for name, us in self._calls(pool, n).items():
                points[name].append((n, us))
        return {name: fit(pts) for name, pts in points.items()}

    def _calls(self, pool: RecordPool, n: int) -> dict[str, float]:
        """Median CPU µs of one call of each stage on n items (inputs made beforehand, fresh for each call)."""
        reps = max(3, min(1000, 16384 // n))
        batches = [pool.take(n) for _ in range(reps)]
        evs = [self.decode(b) for b in batches]
        builder = self.rec.builder()
        pairs = [self.build(builder, e) for e in evs]
        spans = [[s for s, _ in p] for p in pairs]
        payloads = [self.encode(s) for s in spans]
        linker = linker_for(self.rec.linker_args(), IdGenerator(3))
        # A collector batch (decode, build, link, release) through the Collector itself.
        feeder = Feeder()
        collector = pipeline(self._args(), {}, Kernel(), feeder, NullQueue(), 7)
        fresh = [pool.take(n) for _ in range(reps)]
        # The same again with the request-duration metrics on: the difference is their cost in place.
        m_feeder = Feeder()
        m_collector = pipeline(self._args(), {}, Kernel(), m_feeder, NullQueue(), 7, metrics=RequestMetrics())
        m_fresh = [pool.take(n) for _ in range(reps)]
        metrics = RequestMetrics()

        def collector_batch(i: int) -> None:
            feeder.batch = fresh[i]
            collector.process_once()
            collector.release_linked()

        def collector_batch_metrics(i: int) -> None:
            m_feeder.batch = m_fresh[i]
            m_collector.process_once()
            m_collector.release_linked()

        cases: dict[str, Callable[[int], object]] = {
            "decode": lambda i: self.decode(batches[i]),
            "build": lambda i: self.build(builder, evs[i]),
            "link": lambda i: self.link(linker, pairs[i], i * 0.01),
            "metrics": lambda i: metrics.record(spans[i]),
            "encode": lambda i: self.encode(spans[i]),
            "export": lambda i: self.export(payloads[i], n),
            "collector batch": collector_batch,
            "collector batch with metrics": collector_batch_metrics,
        }
        out = {}
        for name, case in cases.items():
            times = [timed(functools.partial(case, i))[0] for i in range(reps)]
            out[name] = statistics.median(times) * 1e6
        return out

    def _args(self) -> argparse.Namespace:
        meta = self.rec.meta
        argv = ["run", "--capture-bytes", str(meta["capture_bytes"])]
        argv += ["--response-capture-bytes", str(meta["resp_capture_bytes"]), "--link-window", str(meta["link_window"])]
        return parse_args(argv, {})


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """(a, b) minimising the relative error of y = a + b n: small calls weigh as much as large ones."""
    w = [1 / (y * y) if y > 0 else 0.0 for _, y in points]
    sw = sum(w)
    sn = sum(wi * n for wi, (n, _) in zip(w, points, strict=True))
    sy = sum(wi * y for wi, (_, y) in zip(w, points, strict=True))
    snn = sum(wi * n * n for wi, (n, _) in zip(w, points, strict=True))
    sny = sum(wi * n * y for wi, (n, y) in zip(w, points, strict=True))
    det = sw * snn - sn * sn
    b = (sw * sny - sn * sy) / det
    a = (sy - b * sn) / sw
    return a, b


# ---------------------------------------------------------------- the whole pipeline, and one core's worth


class SpanCounter:
    """bench/span_counter.py in its own process, on its own CPU."""

    def __init__(self, cpu: int | None) -> None:
        pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
        self.proc = subprocess.Popen(
            [sys.executable, str(COUNTER)], stdout=subprocess.PIPE, text=True, preexec_fn=pin, start_new_session=True
        )
        assert self.proc.stdout is not None
        self.endpoint = self.proc.stdout.readline().split()[1]

    def count(self) -> int:
        os.kill(self.proc.pid, signal.SIGUSR1)
        assert self.proc.stdout is not None
        return int(self.proc.stdout.readline().split()[1])

    def settled(self, timeout_s: float = 10.0) -> int:
        last, deadline = self.count(), time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(0.2)
            now = self.count()
            if now == last:
                return now
            last = now
        return last

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def whole(rec: Recording, counter: SpanCounter) -> tuple[float, float, int]:
    """The recording replayed into a Collector -> export queue -> gRPC: (CPU s, wall s, spans exported)."""
    before = counter.count()
    with RecordingReader(rec.path) as reader:
        queue = ExportQueue(GrpcExporter(counter.endpoint), scope_version=__version__)
        replayer = Replayer(reader, queue)
        cpu, wall = timed(lambda: (replayer.run(), queue.shutdown(30.0)))
    exported = queue.stats().exported
    if counter.settled() - before != exported:
        log("warning: the receiver counted a different number of spans than were exported")
    return cpu, wall, exported


class PacedRing:
    """The kernel's ring buffer filling at ``rate`` records/s for ``duration_s``; a record that finds it full
    is lost, as in the kernel. The records are made before the clock starts (in the kernel that work is
    the traced processes', on their CPUs), and handed over as the collector looks, all that are due by then."""

    def __init__(self, pool: RecordPool, rate: float, duration_s: float, capacity: int = RING_BYTES) -> None:
        self._capacity = capacity
        self._records = pool.take(int(rate * duration_s) + 1)
        self._sizes = [(len(raw) + 8 + 7) & ~7 for raw in self._records]  # each record's header, 8-byte aligned
        self._rate = rate
        self._ring: collections.deque[int] = collections.deque()  # indexes into _records
        self._bytes = 0
        self.produced = self.lost = 0
        self._t0 = time.monotonic()
        self._end = self._t0 + duration_s

    def _fill(self) -> None:
        due = min(int((min(time.monotonic(), self._end) - self._t0) * self._rate), len(self._records))
        sizes, ring = self._sizes, self._ring
        for i in range(self.produced, due):
            if self._bytes + sizes[i] > self._capacity:
                self.lost += 1
            else:
                ring.append(i)
                self._bytes += sizes[i]
        self.produced = max(self.produced, due)

    def drain(self, limit: int) -> list[bytes]:
        self._fill()
        ring, records, sizes = self._ring, self._records, self._sizes
        taken = [ring.popleft() for _ in range(min(limit, len(ring)))]
        self._bytes -= sum(sizes[i] for i in taken)
        return [records[i] for i in taken]

    def wait(self, timeout_s: float) -> None:
        # The kernel wakes the reader once data is there: here, at the next record due.
        self._fill()
        if not self._ring:
            next_due = self._t0 + (self.produced + 1) / self._rate
            time.sleep(min(timeout_s, max(1 / self._rate, next_due - time.monotonic())))


def trial(pool: RecordPool, rate: float, duration_s: float, counter: SpanCounter, args: argparse.Namespace) -> dict:
    """Collector.run at ``rate`` records/s for ``duration_s``: what was lost, exported, and the CPU it took."""
    ring = PacedRing(pool, rate, duration_s)
    queue = ExportQueue(GrpcExporter(counter.endpoint), scope_version=__version__)
    collector = pipeline(args, {}, Kernel(), ring, queue, 11)
    before = counter.count()
    gc.collect()
    cpu, wall = timed(lambda: collector.run(threading.Event(), duration_s))
    queue.shutdown(30.0)
    st = queue.stats()
    received = counter.settled() - before
    dropped = sum(st.dropped.values())
    ok = ring.lost == 0 and dropped == 0 and st.exported == collector.spans_built == ring.produced == received
    return {
        "rate": rate, "ok": ok, "produced": ring.produced, "lost_ring": ring.lost, "dropped": dropped,
        "exported": st.exported, "received": received, "cpu_pct": 100 * cpu / wall,
    }  # fmt: skip


def one_core(rec: Recording, counter: SpanCounter, duration_s: float, start: float) -> tuple[float, list[dict]]:
    """The highest rate with zero loss: doubling from ``start``, then halving the gap 4 times."""
    pool = RecordPool(rec.records)
    args = Stages(rec, counter.endpoint)._args()
    trials = []

    def run(rate: float) -> bool:
        t = trial(pool, rate, duration_s, counter, args)
        trials.append(t)
        log(f"  {rate:>8.0f} spans/s: {'ok' if t['ok'] else 'LOSS'} {t}")
        return t["ok"]

    good, bad = 0.0, start
    while run(bad):
        good, bad = bad, bad * 2
    for _ in range(4):
        mid = (good + bad) / 2
        if run(mid):
            good = mid
        else:
            bad = mid
    return good, trials


# ---------------------------------------------------------------- report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recording", type=Path, help="a recording from `otelbpf record` (default: a synthetic one)")
    ap.add_argument("--requests", type=int, default=20000, help="synthetic requests (2 spans each)")
    ap.add_argument("--connections", type=int, default=8, help="synthetic keep-alive connections")
    ap.add_argument("--rate", type=float, default=10000.0, help="synthetic requests per second (recorded times)")
    ap.add_argument("--trial-seconds", type=float, default=3.0, help="length of each one-core trial")
    ap.add_argument("--cpus", default="0,1", help="collector CPU, receiver CPU")
    args = ap.parse_args()
    cpus = [int(c) for c in args.cpus.split(",")]
    if len(os.sched_getaffinity(0)) >= 2:
        # Before any thread exists: the export and gRPC threads inherit the main thread's CPU.
        os.sched_setaffinity(0, {cpus[0]})
    else:
        log("one CPU only: the collector and the receiver share it")
        cpus = [cpus[0], None]  # type: ignore[list-item]
    counter = SpanCounter(cpus[1])
    tmp = tempfile.TemporaryDirectory(prefix="otelbpf-bench-")
    try:
        path = args.recording
        if path is None:
            path = Path(tmp.name) / "synthetic.rec"
            log(f"recording {args.requests} synthetic requests on {args.connections} connections")
            synthesize(path, args.requests, args.connections, args.rate)
        rec = Recording(path)
        log(f"{path}: {len(rec.records)} records in {len(rec.batches)} batches ({path.stat().st_size / 2**20:.1f} MiB)")
        stages = Stages(rec, counter.endpoint)
        log("each stage over the whole recording (best of 3)")
        runs = [stages.bulk() for _ in range(3)]
        bulk = {name: min((r[name] for r in runs), key=lambda t: t[0]) for name in runs[0]}
        log("fixed and per-span cost")
        fits = stages.fits()
        log("the whole pipeline")
        cpu, wall, exported = whole(rec, counter)
        log("one core's worth")
        best, trials = one_core(rec, counter, args.trial_seconds, 2000.0)
    finally:
        counter.stop()
        tmp.cleanup()
    report(rec, bulk, fits, (cpu, wall, exported), best, trials, cpus)
    return 0


def machine() -> str:
    """CPU model, CPUs, kernel and Python: where the figures come from."""
    model = "unknown CPU"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} CPUs, Linux {os.uname().release}, Python {sys.version.split()[0]}"


def report(rec, bulk, fits, whole_run, best, trials, cpus) -> None:  # noqa: ANN001 - plain data
    cpu, wall, exported = whole_run
    print(f"\n### Pipeline stages ({len(rec.records)} records, {exported} spans; otelbpf {__version__})\n")
    print(f"{machine()}\n")
    print("| stage | CPU µs/span (whole recording) | fixed µs/call | µs/span (fit) |")
    print("|---|---:|---:|---:|")
    for name in ("decode", "build", "link", "metrics", "encode", "export"):
        c, w, n = bulk[name]
        a, b = fits[name]
        extra = f" (wall {w / n * 1e6:.2f})" if name == "export" else ""
        print(f"| {name} | {c / n * 1e6:.2f}{extra} | {a + 0.0:.1f} | {b:.2f} |")
    a, b = fits["collector batch"]
    print(f"| collector batch (process_once + release_linked) | | {a + 0.0:.1f} | {b:.2f} |")
    a, b = fits["collector batch with metrics"]
    print(f"| collector batch with metrics | | {a + 0.0:.1f} | {b:.2f} |")
    print(f"| whole pipeline (replay -> Collector -> queue -> gRPC) | {cpu / exported * 1e6:.2f} "
          f"(wall {wall / exported * 1e6:.2f}) | | |")  # fmt: skip
    where = f"CPU {cpus[0]}, receiver on CPU {cpus[1]}" if cpus[1] is not None else "one shared CPU"
    print(f"\nOne core's worth ({where}): **{best:.0f} spans/s** with zero loss.\n")
    print("| spans/s | records lost (ring) | dropped (queue) | exported | collector CPU % | zero loss |")
    print("|---:|---:|---:|---:|---:|---|")
    for t in trials:
        print(f"| {t['rate']:.0f} | {t['lost_ring']} | {t['dropped']} | {t['exported']} | {t['cpu_pct']:.0f} | "
              f"{'yes' if t['ok'] else 'no'} |")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
