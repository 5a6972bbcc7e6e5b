"""Wires the stages together for ``otelbpf run``: preflight, probes, collector, export, summary."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Mapping

from otelbpf import __version__, preflight
from otelbpf.btf import BtfError
from otelbpf.clock import ClockMap
from otelbpf.collector import Collector
from otelbpf.console import ConsolePrinter, ConsoleQueue
from otelbpf.correlate import SpanBuilder
from otelbpf.export import (
    BatchQueue,
    ExportQueue,
    create_exporter,
    queue_settings_from_env,
    resolve_otlp_settings,
)
from otelbpf.kernel_offsets import all_offsets
from otelbpf.resources import ResourceCache
from otelbpf.targets import TargetError, TargetSpec, resolve

logger = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A problem reported to the user as one line, exiting non-zero."""


def _queue(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[BatchQueue, str]:
    try:
        settings = resolve_otlp_settings(args.otlp_endpoint, args.otlp_protocol, args.otlp_headers, env)
        qkw = queue_settings_from_env(env)
    except ValueError as exc:
        raise RunError(str(exc)) from exc
    if args.queue_size is not None:
        qkw["max_queue_spans"] = args.queue_size
    if args.batch_size is not None:
        qkw["max_batch"] = args.batch_size
    if settings is None:
        printer = ConsolePrinter(stream=sys.stdout, color=False if args.no_color else None)
        return ConsoleQueue(printer, max_queue_spans=qkw.get("max_queue_spans", 20000)), "terminal"
    try:
        exporter = create_exporter(settings)
    except ValueError as exc:
        raise RunError(str(exc)) from exc
    return ExportQueue(
        exporter, scope_version=__version__, **qkw
    ), f"OTLP {settings.protocol} {settings.endpoint}"


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Run until stopped; return the exit code."""
    from otelbpf.probes import (
        TRACEPOINTS,
        ProbeError,
        ProbeSettings,
        SocketProbes,
        bpf_source_dir,
        render_cflags,
    )

    settings = ProbeSettings(
        capture_bytes=args.capture_bytes,
        max_connections=args.max_connections,
        ringbuf_pages=args.ring_buffer_pages,
        max_events_per_second=args.max_spans_per_second,
    )
    try:
        settings.cflags()
    except ValueError as exc:
        raise RunError(str(exc)) from exc
    if args.ebpf:
        print((bpf_source_dir() / SocketProbes.SOURCE).read_text())
        print("// cflags: " + " ".join(render_cflags(settings, {})))
        return 0

    spec = TargetSpec(pids=args.pid, exes=args.exe, ports=args.port)
    try:
        preflight.check_root()
        preflight.check_btf()
        preflight.check_tracepoints(TRACEPOINTS)
        preflight.check_kernel_headers()
        pids = resolve(spec)
        offsets = all_offsets()
    except (preflight.PreflightError, TargetError, BtfError) as exc:
        raise RunError(str(exc)) from exc
    if args.service_name:
        env = {**env, "OTEL_SERVICE_NAME": args.service_name}

    queue, destination = _queue(args, env)
    try:
        probes = SocketProbes(settings, offsets)
    except ProbeError as exc:
        queue.shutdown(1.0)
        raise RunError(str(exc)) from exc
    from otelbpf.ringbuf import RingBufferReader

    try:
        self_pid = os.getpid()
        if not spec.trace_all:
            probes.add_target_comms(spec.exes)
            probes.add_targets(pids)
        probes.configure(self_pid, trace_all=spec.trace_all)
        reader = RingBufferReader(probes.ring_fd, probes.ring_size)
        builder = SpanBuilder(ResourceCache(env), ClockMap(), capture_query=args.capture_query)

        def maintenance() -> None:
            builder.clock.maybe_refresh()
            if spec.ports or spec.pids or spec.exes:
                # Listeners that appeared since the start (--port) join; the kernel adds exec/fork.
                fresh = resolve(TargetSpec(ports=spec.ports)) if spec.ports else set()
                if fresh:
                    probes.add_targets(fresh)

        collector = Collector(probes, reader, builder, queue, settings.capture_bytes, maintenance=maintenance)
        if args.nice:
            try:
                os.nice(args.nice)
            except OSError:
                logger.debug("could not lower the collector's priority")
        stop = threading.Event()
        from otelbpf.cli import install_signal_handlers

        install_signal_handlers(stop)
        what = spec.describe()
        print(
            f"otelbpf: ready: tracing {what} ({len(pids)} processes now); exporting to {destination}",
            file=sys.stderr,
            flush=True,
        )
        collector.run(stop, args.duration or None)
        # Every finished span goes out before the summary, bounded so a dead backend cannot hang exit.
        queue.shutdown(timeout_s=10.0)
        summary = collector.summary(destination)
        print(summary.format(), file=sys.stderr, flush=True)
    finally:
        probes.close()
    return 0
