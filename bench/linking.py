"""Benchmark: the span linker alone, on synthetic three-service traces (no kernel, no root needed).

Run:  .venv/bin/python bench/linking.py [--traces N] [--rate R]

Feeds N traces of 5 spans each (front SERVER -> CLIENT -> node SERVER -> CLIENT -> backend SERVER,
arriving children first, as the kernel delivers them) at R traces per second of simulated time, with
node serving about 7 requests at once on one thread. The baseline makes the same spans and passes
them through (`--link-window 0`). Reports CPU per span for both, the most spans held at once, peak
Python memory (tracemalloc, in a separate pass), and checks every trace came out whole.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otelbpf import events  # noqa: E402
from otelbpf.correlate import IdGenerator  # noqa: E402
from otelbpf.linking import TraceLinker  # noqa: E402
from otelbpf.spans import Resource, Span, SpanKind  # noqa: E402
from tests.factories import http_event, v4  # noqa: E402

S, C = events.ROLE_SERVER, events.ROLE_CLIENT
RES = Resource((("service.name", "bench"),))
LOOPBACK = v4("127.0.0.1")


def one(ids: IdGenerator, pid: int, tid: int, role: int, start: int, end: int, lp: int, pp: int, cause: int = 0):
    ev = http_event(
        role=role, pid=pid, tid=tid, start_ns=start, end_ns=end, local_addr=LOOPBACK, peer_addr=LOOPBACK,
        local_port=lp, peer_port=pp, cause_ns=cause,
    )  # fmt: skip
    span = Span(
        trace_id=ids.trace_id(), span_id=ids.span_id(), name="GET /x",
        kind=SpanKind.SERVER if role == S else SpanKind.CLIENT, start_ns=start, end_ns=end, resource=RES,
        attributes={"network.local.address": "127.0.0.1", "network.local.port": lp,
                    "network.peer.address": "127.0.0.1", "network.peer.port": pp},
    )  # fmt: skip
    return span, ev


def trace(ids: IdGenerator, i: int, step_ns: int) -> list:
    """Trace i's 5 spans, children first, as the kernel delivers them."""
    t = i * step_ns
    d = 4000  # each trace lasts 3.6 ms: about 7 in flight at once on node's thread at 2000/s
    p1, p2 = 10000 + i % 50000, 20000 + (i * 7) % 40000
    return [
        one(ids, 300, 31 + i % 16, S, t + 350 * d, t + 650 * d, 9443, p2),
        one(ids, 200, 21, C, t + 300 * d, t + 700 * d, p2, 9443, cause=t + 250 * d),
        one(ids, 200, 21, S, t + 250 * d, t + 750 * d, 9000, p1),
        one(ids, 100, 11 + i % 16, C, t + 200 * d, t + 800 * d, p1, 9000, cause=t + 100 * d),
        one(ids, 100, 11 + i % 16, S, t + 100 * d, t + 1000 * d, 8000, 40000 + i % 20000),
    ]


def run(n: int, rate: float, link: bool, memory: bool) -> dict:
    """Feed n traces; spans are made on the fly and dropped once released, as in the collector."""
    ids, lk_ids = IdGenerator(seed=7), IdGenerator(seed=3)
    lk = TraceLinker(lk_ids.trace_id, lk_ids.span_id) if link else None
    step_ns = int(1e9 / rate)
    released = most_held = broken = 0
    if memory:
        tracemalloc.start()
    t0 = time.process_time()
    for i in range(n):
        now = i * step_ns / 1e9
        spans = trace(ids, i, step_ns)
        if lk is None:
            released += len(spans)
            continue
        for span, ev in spans:
            lk.add(span, ev, now)
        out = lk.take_ready(now) + lk.take_early()
        released += len(out)
        broken += _broken(out)
        most_held = max(most_held, lk.held)
    if lk is not None:
        out = lk.flush(n * step_ns / 1e9 + 100)
        released += len(out)
        broken += _broken(out)
    cpu = time.process_time() - t0
    peak = tracemalloc.get_traced_memory()[1] if memory else 0
    if memory:
        tracemalloc.stop()
    return {"spans": released, "cpu_us_per_span": cpu / (5 * n) * 1e6, "most_held": most_held,
            "peak_mib": peak / 2**20, "broken": broken}  # fmt: skip


def _broken(spans: list[Span]) -> int:
    """Traces released in this batch that are not one whole 5-span tree (0 when all are whole)."""
    by_trace: dict[bytes, int] = {}
    for s in spans:
        by_trace[s.trace_id] = by_trace.get(s.trace_id, 0) + 1
    return sum(1 for count in by_trace.values() if count != 5)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=2000.0, help="traces per second (simulated time)")
    args = ap.parse_args()
    # CPU without tracemalloc (it slows allocation several times over), then memory with it.
    base, linked = run(args.traces, args.rate, False, False), run(args.traces, args.rate, True, False)
    base_mem, linked_mem = run(args.traces, args.rate, False, True), run(args.traces, args.rate, True, True)
    extra = linked["cpu_us_per_span"] - base["cpu_us_per_span"]
    window = TraceLinker(bytes, bytes).window_s
    print(f"{args.traces} traces x 5 spans at {args.rate:.0f} traces/s ({5 * args.rate:.0f} spans/s), window {window}s")
    print("| | spans passed through | linker |\n|---|---:|---:|")
    print(f"| CPU per span, making the span included (µs) | {base['cpu_us_per_span']:.2f} | "
          f"{linked['cpu_us_per_span']:.2f} (+{extra:.2f}) |")  # fmt: skip
    print(f"| spans out | {base['spans']} | {linked['spans']} |")
    print(f"| most spans held at once | 0 | {linked['most_held']} |")
    print(f"| peak Python memory (MiB) | {base_mem['peak_mib']:.1f} | {linked_mem['peak_mib']:.1f} |")
    print(f"| traces not whole | - | {linked['broken']} |")
    return 0 if linked["broken"] == 0 and linked["spans"] == 5 * args.traces else 1


if __name__ == "__main__":
    sys.exit(main())
