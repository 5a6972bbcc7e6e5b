"""Benchmark: redis-benchmark as a traced Redis client, untraced and traced side by side.

Run as root:  .venv/bin/python bench/redis_bench.py      (or: make bench-redis)

A private redis-server (no persistence) answers redis-benchmark's SET and GET over loopback, one command
per round trip (-P 1). Untraced and traced windows alternate (B T B T B) in the same run. In the traced
windows otelbpf traces every redis-benchmark started (--exe redis-benchmark), with --no-adaptive so that
every command is traced, and exports to bench/span_counter.py. Reported: throughput and the ratio, spans
exported per command, events lost, and the collector's CPU per span from "ready" to exit (the final flush
included). It prints a markdown section, appended to docs/benchmarks.md unless --no-doc.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nginx_http as nb  # noqa: E402  (process, otelbpf and span-counter helpers)


@dataclass
class Window:
    """One redis-benchmark run: commands per second over SET and GET, and how many were sent."""

    label: str
    rps: float
    commands: int


def redis_server(procs: nb.Procs, tmp: Path) -> int:
    binary = shutil.which("redis-server")
    if not binary:
        raise SystemExit("redis-server is not installed (make setup)")
    port = nb.free_port()
    procs.start(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp,
    )
    nb.wait_port(port)
    return port


def run_benchmark(label: str, port: int, requests: int, clients: int) -> Window:
    t0 = time.monotonic()
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-t", "set,get", "-n", str(requests), "-c", str(clients), "-P", "1", "-q"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    elapsed = time.monotonic() - t0
    rates = [float(x) for x in re.findall(r"^(?:SET|GET): ([\d.]+) requests per second", out, re.M)]
    if len(rates) != 2:
        raise RuntimeError(f"redis-benchmark printed no SET/GET rates:\n{out}")
    # The two tests run one after the other: the combined rate is the harmonic mean.
    rps = 2 / (1 / rates[0] + 1 / rates[1])
    nb.log(f"{label}: {rps:,.0f} commands/s ({2 * requests:,} commands, {elapsed:.1f} s)")
    return Window(label, rps, 2 * requests)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=100_000, help="commands per test (SET, then GET)")
    ap.add_argument("--clients", type=int, default=16, help="redis-benchmark's parallel connections")
    ap.add_argument("--rounds", type=int, default=2, help="traced windows (untraced: one more)")
    ap.add_argument(
        "--tracer-args",
        default="--no-adaptive --max-spans-per-second 0",
        help="otelbpf's flags besides the target (default: every command traced, none shed)",
    )
    ap.add_argument("--no-doc", action="store_true", help=f"do not append to {nb.DOC.relative_to(nb.ROOT)}")
    args = ap.parse_args()

    procs = nb.Procs()
    base: list[Window] = []
    traced: list[Window] = []
    spans = lost = commands = 0
    cpu_us = 0.0
    try:
        with tempfile.TemporaryDirectory(prefix="otelbpf-redis-") as tmp:
            port = redis_server(procs, Path(tmp))
            counter = nb.SpanCounter(procs)
            idle = procs.start(["sleep", "infinity"])
            base.append(run_benchmark("untraced", port, args.requests, args.clients))
            for i in range(args.rounds):
                extra = ["--exe", "redis-benchmark", *args.tracer_args.split()]
                tracer = nb.Otelbpf(procs, idle.pid, counter.endpoint, extra)
                n0 = counter.count()
                w = run_benchmark(f"traced {i + 1}", port, args.requests, args.clients)
                res = tracer.stop()
                traced.append(w)
                spans += counter.settled_count() - n0
                lost += res.summary.get("events lost", 0)
                commands += w.commands
                cpu_us += res.cpu_after_ready_us
                base.append(run_benchmark("untraced", port, args.requests, args.clients))
    finally:
        procs.kill_all()

    text = report(args, base, traced, spans, lost, commands, cpu_us)
    print(text)
    if not args.no_doc:
        with open(nb.DOC, "a") as f:
            f.write("\n" + text)
    return 0


def report(
    args: argparse.Namespace,
    base: list[Window],
    traced: list[Window],
    spans: int,
    lost: int,
    commands: int,
    cpu_us: float,
) -> str:
    m = nb.machine()
    b = nb.median([w.rps for w in base])
    t = nb.median([w.rps for w in traced])
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        f"## Redis client: redis-benchmark against redis-server ({stamp})",
        "",
        f"`.venv/bin/python bench/redis_bench.py --requests {args.requests} --clients {args.clients} "
        f"--rounds {args.rounds} --tracer-args '{args.tracer_args}'` on {m['nproc']} CPUs ({m['cpu']}), "
        f"kernel {m['kernel']}; SET then GET, one command per round trip; otelbpf with "
        f"`--exe redis-benchmark {args.tracer_args}`.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| untraced throughput (median of {len(base)}) | {b:,.0f} commands/s |",
        f"| traced throughput (median of {len(traced)}) | {t:,.0f} commands/s |",
        f"| ratio traced ÷ untraced | {t / b:.2f} |",
        f"| spans exported ÷ commands sent while traced | {spans:,} ÷ {commands:,} |",
        f"| events lost while traced | {lost:,} |",
        f"| collector CPU per span (µs), ready → exit incl. final flush | {cpu_us / max(spans, 1):.1f} |",
        "",
        "Each window's commands/s: untraced " + ", ".join(f"{w.rps:,.0f}" for w in base)
        + "; traced " + ", ".join(f"{w.rps:,.0f}" for w in traced) + ".",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
