"""Benchmark: what otelbpf costs when every request opens a new TCP connection.

Run as root:  .venv/bin/python bench/connection_churn.py      (or: make bench-connections)

bench/nginx_http.py drives keep-alive connections, so it never pays for what happens once per
connection: connect, accept and close, whose syscall hooks run for every process on the machine,
traced or not. Here ab requests nginx's static file without
keep-alive, so each request is one connection. One run measures, side by side:
  * untraced and traced windows alternating (B T B T B): throughput at saturation, and the ratio;
  * in the traced windows (kernel.bpf_stats_enabled), the run time of each of otelbpf's BPF programs
    per connection, and how often each ran;
  * a window with otelbpf tracing only an idle process: what every other process on the machine pays
    for the probes being there (the syscall hooks' early exits).
It prints a markdown table, appended to docs/benchmarks.md unless --no-doc.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import nginx_http as nb  # noqa: E402  (the nginx, otelbpf and bpf_stats helpers)


@dataclass
class Window:
    """One saturation window of ab."""

    label: str
    rps: float
    requests: int
    failed: int


def run_ab(url: str, concurrency: int, seconds: float) -> Window:
    """ab without keep-alive for ``seconds``: one new TCP connection per request."""
    out = subprocess.run(
        ["ab", "-q", "-r", "-t", str(seconds), "-n", "100000000", "-c", str(concurrency), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout

    def number(label: str) -> float:
        m = re.search(rf"^{label}:\s+([\d.]+)", out, re.M)
        if not m:
            raise RuntimeError(f"ab printed no {label!r}:\n{out}")
        return float(m.group(1))

    return Window("", number("Requests per second"), int(number("Complete requests")), int(number("Failed requests")))


def saturate(label: str, url: str, concurrency: int, seconds: float) -> Window:
    w = run_ab(url, concurrency, seconds)
    w.label = label
    nb.log(f"{label}: {w.rps:,.0f} req/s ({w.requests:,} requests, {w.failed} failed)")
    return w


def per_program(before: dict[int, dict], after: dict[int, dict], connections: int) -> list[tuple[str, float, float]]:
    """(program, ns per connection, runs per connection) for each program that ran, busiest first."""
    return [(name, ns / connections, runs / connections) for name, ns, runs in nb.bpf_breakdown(before, after)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each window")
    ap.add_argument("--rounds", type=int, default=2, help="traced windows (untraced: one more)")
    ap.add_argument("--concurrency", type=int, default=16, help="ab's concurrent requests")
    ap.add_argument("--no-doc", action="store_true", help=f"do not append to {nb.DOC.relative_to(nb.ROOT)}")
    args = ap.parse_args()

    procs = nb.Procs()
    try:
        with tempfile.TemporaryDirectory(prefix="otelbpf-churn-") as tmp:
            nginx = nb.Nginx(procs, Path(tmp))
            counter = nb.SpanCounter(procs)
            idle = procs.start(["sleep", "infinity"])
            base: list[Window] = []
            traced: list[Window] = []
            programs: list[list[tuple[str, float, float]]] = []
            spans = lost = served = 0
            base.append(saturate("untraced", nginx.url, args.concurrency, args.seconds))
            for i in range(args.rounds):
                tracer = nb.Otelbpf(procs, nginx.master_pid, counter.endpoint, ["--no-adaptive"])
                with nb.bpf_stats_enabled():
                    before = nb.otelbpf_progs(tracer.pid)
                    n0 = nginx.requests_total()
                    w = saturate(f"traced {i + 1}", nginx.url, args.concurrency, args.seconds)
                    # stub_status counts its own request: minus one. ab's count misses requests in
                    # flight when it stops, which nginx served and otelbpf traced.
                    served += nginx.requests_total() - n0 - 1
                    after = nb.otelbpf_progs(tracer.pid)
                res = tracer.stop()
                traced.append(w)
                programs.append(per_program(before, after, w.requests))
                spans += res.summary.get("spans exported", 0)
                lost += res.summary.get("events lost", 0)
                base.append(saturate("untraced", nginx.url, args.concurrency, args.seconds))
            # Probes attached, but the only traced process is idle: the tax on everything else.
            tracer = nb.Otelbpf(procs, idle.pid, counter.endpoint)
            with nb.bpf_stats_enabled():
                before = nb.otelbpf_progs(tracer.pid)
                bystander = saturate("probes attached, nginx not traced", nginx.url, args.concurrency, args.seconds)
                after = nb.otelbpf_progs(tracer.pid)
            tracer.stop()
            bystander_programs = per_program(before, after, bystander.requests)
    finally:
        procs.kill_all()

    text = report(args, base, traced, programs, bystander, bystander_programs, spans, lost, served)
    print(text)
    if not args.no_doc:
        with open(nb.DOC, "a") as f:
            f.write("\n" + text)
    return 0


def report(
    args: argparse.Namespace,
    base: list[Window],
    traced: list[Window],
    programs: list[list[tuple[str, float, float]]],
    bystander: Window,
    bystander_programs: list[tuple[str, float, float]],
    spans: int,
    lost: int,
    served: int,
) -> str:
    m = nb.machine()
    b = statistics.median(w.rps for w in base)
    t = statistics.median(w.rps for w in traced)
    lines = [
        f"## Connection churn: nginx under ab without keep-alive ({m['date']})",
        "",
        f"`.venv/bin/python bench/connection_churn.py --seconds {args.seconds:g} --rounds {args.rounds} "
        f"--concurrency {args.concurrency}` on {m['nproc']} CPUs ({m['cpu']}), kernel {m['kernel']}, "
        f"nginx {m['nginx']} (1 worker), one TCP connection per request; otelbpf with `--no-adaptive`, so every "
        "request is traced.",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| untraced throughput (median of {len(base)}) | {b:,.0f} req/s |",
        f"| traced throughput (median of {len(traced)}) | {t:,.0f} req/s |",
        f"| ratio traced ÷ untraced | {t / b:.2f} |",
        f"| spans exported ÷ requests nginx served while traced | {spans:,} ÷ {served:,} |",
        f"| events lost while traced | {lost:,} |",
        f"| probes attached, only an idle process traced: throughput ÷ untraced | {bystander.rps / b:.2f} |",
        "",
        "BPF run time per connection, traced windows (last one) and the bystander window:",
        "",
        "| program | ns per connection, traced | runs per connection, traced | ns per connection, bystander |",
        "|---|---:|---:|---:|",
    ]
    by_name = {name: ns for name, ns, _ in bystander_programs}
    last = programs[-1]
    for name, ns, runs in last:
        lines.append(f"| {name} | {ns:,.0f} | {runs:.2f} | {by_name.get(name, 0):,.0f} |")
    total = sum(ns for _, ns, _ in last)
    lines.append(f"| **all** | **{total:,.0f}** | | **{sum(by_name.values()):,.0f}** |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
