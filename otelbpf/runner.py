"""Wires the stages together for ``otelbpf run`` and ``record``: preflight, probes, collector, export, summary."""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import psutil

from otelbpf import __version__, preflight
from otelbpf.btf import BtfError
from otelbpf.clock import ClockMap
from otelbpf.collector import Collector, KernelSource, RecordReader
from otelbpf.console import ConsolePrinter, ConsoleQueue
from otelbpf.containers import ContainerMetadata, DockerMetadata, docker_socket
from otelbpf.correlate import IdGenerator, SpanBuilder
from otelbpf.export import (
    BatchQueue,
    ExportQueue,
    create_exporter,
    queue_settings_from_env,
    resolve_otlp_settings,
)
from otelbpf.governor import LoadGovernor
from otelbpf.kernel_offsets import all_offsets, tracepoint_offsets
from otelbpf.kubernetes import KubeApi, KubeletLogs, KubernetesMetadata, node_name
from otelbpf.linking import TraceLinker
from otelbpf.metrics import RequestMetrics
from otelbpf.otlp_metrics import MetricsExporter, MetricsSettings, resolve_metrics_settings, start_metrics
from otelbpf.recording import Recorder
from otelbpf.resources import ResourceCache, host_name
from otelbpf.targets import ContainerWatch, TargetError, TargetSpec, exes_not_running, resolve
from otelbpf.tcp_metrics import TcpMetrics
from otelbpf.tls_follow import TlsFollower
from otelbpf.tls_libraries import LibraryScanner, TlsLibrary
from otelbpf.tls_processes import ProcessProbes
from otelbpf.tls_watch import TlsConfigError, TlsWatcher, user_libraries

if TYPE_CHECKING:
    from otelbpf.probes import KernelProbes

logger = logging.getLogger(__name__)


class RunError(RuntimeError):
    """A problem reported to the user as one line, exiting non-zero."""


def export_queue(args: argparse.Namespace, env: Mapping[str, str]) -> tuple[BatchQueue, str]:
    """The export queue the flags ask for (the terminal when no endpoint), and where it sends spans."""
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
    return ExportQueue(exporter, scope_version=__version__, **qkw), f"OTLP {settings.protocol} {settings.endpoint}"


def metrics_settings(args: argparse.Namespace, env: Mapping[str, str]) -> MetricsSettings | None:
    """Where and how metrics go, as the flags and environment ask; None: no metrics."""
    try:
        return resolve_metrics_settings(
            args.otlp_endpoint,
            args.otlp_protocol,
            args.otlp_headers,
            env,
            enabled=args.metrics,
            interval_s=args.metric_export_interval,
            temporality=args.metric_temporality,
        )
    except ValueError as exc:
        raise RunError(str(exc)) from exc


def install_signal_handlers(stop: threading.Event) -> None:
    """SIGINT and SIGTERM ask the run loop to flush and stop."""

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def lower_priority(nice: int, sched_idle: bool) -> None:
    """Make the collector yield CPU to the traced applications.

    Runs before any thread exists: Linux keeps nice and the scheduling policy per thread, and new
    threads (the exporter's, gRPC's) inherit them from their creator.
    """
    if sched_idle:
        try:
            # SCHED_IDLE: run only on CPU time nothing else wants. If the collector then falls behind,
            # the ring buffer fills and the loss is counted, instead of the applications slowing down.
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError as exc:
            logger.warning("could not switch to SCHED_IDLE (%s); using nice %d", exc, nice)
            sched_idle = False
    if nice and not sched_idle:
        try:
            os.nice(nice)
        except OSError as exc:
            logger.warning("could not lower the collector's priority: %s", exc)


def linker_for(args: argparse.Namespace, ids: IdGenerator | None = None) -> TraceLinker | None:
    """The span linker the flags ask for, drawing from ``ids`` as the span builder does; None with --link-window 0."""
    if args.link_window < 0:
        raise ValueError(f"--link-window must be 0 (no linking) or more, got {args.link_window}")
    if args.link_window == 0:
        return None
    if args.link_max_hold < args.link_window:
        raise ValueError(f"--link-max-hold ({args.link_max_hold}) must be at least --link-window ({args.link_window})")
    if args.link_max_spans < 1:
        raise ValueError(f"--link-max-spans must be at least 1, got {args.link_max_spans}")
    ids = ids or IdGenerator()
    return TraceLinker(ids.trace_id, ids.span_id, args.link_window, args.link_max_hold, args.link_max_spans)


def _tls_wanted(args: argparse.Namespace) -> bool:
    """Whether HTTPS plaintext is followed: not with --no-tls, nor on a kernel without uprobes."""
    if not args.tls:
        return False
    if not preflight.uprobes_supported():
        logger.warning("TLS: this kernel has no uprobes (CONFIG_UPROBE_EVENTS): HTTPS requests are not traced")
        return False
    return True


def tls_per_process(args: argparse.Namespace, spec: TargetSpec) -> bool:
    """Whether TLS probes go on per traced process (--tls-attach; auto: when the selection names processes)."""
    if args.tls_attach == "per-process" and spec.trace_all:
        raise RunError("--tls-attach per-process needs a selection (--pid, --exe, --port or --container)")
    if args.tls_attach == "auto":
        return not spec.trace_all
    return args.tls_attach == "per-process"


def programs_to_come(spec: TargetSpec, scanner: LibraryScanner | None = None) -> list[str]:
    """The parts of a selection whose TLS will be done by programs not started yet: --pid processes that
    map no TLS library themselves (shells, supervisors, test runners) and --exe names nothing runs yet.

    Such a program makes its first TLS call a few milliseconds after exec: sooner than a per-process
    attach (about one RCU grace period a probe, 20-30 ms here) can be in place. --container selections
    are not counted: a container's TLS libraries are its image's files, which hooking the host's
    libraries file-wide would not cover.
    """
    scanner = scanner or LibraryScanner()
    found = [f"pid {pid}" for pid in spec.pids if scanner.libraries_of(pid) == []]
    return found + [f"exe {name}" for name in exes_not_running(spec.exes)]


def _start_tls(
    args: argparse.Namespace, probes: KernelProbes, spec: TargetSpec, per_process: bool, user: list[TlsLibrary]
) -> tuple[TlsWatcher, TlsFollower]:
    """Hook TLS libraries (file-wide, or per traced process), then follow processes on a thread of their own."""

    def pids() -> set[int]:
        # The kernel's table also holds thread ids; /proc lists processes only.
        live = set(psutil.pids())
        return live if spec.trace_all else live & set(probes.target_pids())

    if args.tls_max_process_probes < 0:
        raise RunError(f"--tls-max-process-probes must be 0 or more, got {args.tls_max_process_probes}")
    processes = None
    system_file_wide = False
    if per_process:
        processes = ProcessProbes(probes.attach_tls, probes.detach_tls, probes.report_exit, args.tls_max_process_probes)
        to_come = programs_to_come(spec) if args.tls_attach == "auto" else []
        if to_come:
            system_file_wide = True
            logger.info(
                "TLS: %s will do TLS in programs not started yet, so the system's TLS libraries are hooked "
                "file-wide for them (--tls-attach per-process to refuse)",
                ", ".join(to_come),
            )
    watcher = TlsWatcher(probes.attach_tls, pids, user=user, processes=processes, system_file_wide=system_file_wide)
    try:
        watcher.start()
    except TlsConfigError as exc:
        raise RunError(str(exc)) from exc
    follower = TlsFollower(watcher, probes.task_ring_fd, probes.task_ring_size, args.tls_scan_interval)
    follower.start()
    return watcher, follower


def _tls_notes(watcher: TlsWatcher, events_lost: int) -> dict[str, int]:
    """The summary's TLS lines: what was hooked, how, and how long new processes ran unhooked."""
    st = watcher.stats
    notes = {
        "TLS libraries attached": st.libraries_attached,
        "TLS library attach failures": st.attach_failures,
        "TLS process events lost (ring full; found by the next scan)": events_lost,
    }
    processes = watcher.processes
    if processes is not None:
        notes |= {
            "TLS processes given their own probes": processes.stats.processes_hooked,
            "TLS per-process probes, most open at once": processes.stats.peak_open,
            "TLS libraries hooked file-wide (per-process budget reached)": processes.stats.libraries_over_cap,
            "TLS system libraries hooked file-wide (for programs yet to start)": st.system_file_wide,
        }
    for event, what, delays in (
        ("exec", "programs hooked after exec", st.after_exec),
        ("fork", "processes hooked after fork", st.after_fork),
        ("mapping", "libraries hooked after being mapped", st.after_map),
    ):
        notes[f"TLS {what}"] = delays.count
        if delays.count:
            notes[f"  {event} to hooked, median (µs)"] = delays.median_us
            notes[f"  {event} to hooked, longest (µs)"] = delays.max_us
    return notes


def check_scan_intervals(args: argparse.Namespace) -> None:
    """Refuse negative rescan intervals, naming the flag (0 means: only at start)."""
    for flag, value in (
        ("--tls-scan-interval", args.tls_scan_interval),
        ("--port-scan-interval", args.port_scan_interval),
        ("--container-scan-interval", args.container_scan_interval),
    ):
        if value < 0:
            raise RunError(f"{flag} must be 0 (scan only at start) or more, got {value:g}")


def _port_rescan(
    probes: KernelProbes, ports: list[int], known: set[int], joined: Callable[[set[int]], None] | None = None
) -> Callable[[], None]:
    """A periodic job: trace processes that started listening on ``ports`` since the last look (and tell
    ``joined``, which hooks their TLS libraries)."""
    known = set(known)

    def rescan() -> None:
        # The kernel already follows fork and exec of traced processes; only new listeners need finding.
        fresh = resolve(TargetSpec(ports=ports)) - known
        if not fresh:
            return
        probes.add_targets(fresh)
        known.update(fresh)
        if joined is not None:
            joined(fresh)
        for pid in sorted(fresh):
            logger.info("now tracing pid %d (%s): it listens on a selected port", pid, _comm(pid))

    return rescan


def _late_targets(spec: TargetSpec, watch: ContainerWatch | None, known: set[int]) -> set[int]:
    """Selected processes that were not there at the first resolve."""
    # A --pid that exited during the compile is no error now: its spans, if any, are already in the ring.
    alive = dataclasses.replace(spec, pids=[pid for pid in spec.pids if psutil.pid_exists(pid)])
    try:
        return resolve(alive, containers=watch) - known
    except TargetError as exc:
        logger.warning("selection changed while the probes were compiled: %s", exc)
        return set()


def container_metadata(args: argparse.Namespace, env: Mapping[str, str]) -> ContainerMetadata:
    """Where container and pod names come from, as the flags and the environment say."""
    api = KubeApi.from_env(env) if args.kube_api else None
    kube = KubernetesMetadata(KubeletLogs(args.kube_log_dir), api, node_name(env, host_name(env)))
    return ContainerMetadata(DockerMetadata(docker_socket(args.docker_socket, env), args.docker_dir), kube)


def container_watch(spec: TargetSpec, metadata: ContainerMetadata) -> ContainerWatch | None:
    """What finds the processes of --container selections, asking ``metadata`` for names; None without any."""
    if not spec.containers:
        return None
    return ContainerWatch(spec.containers, lambda ref: metadata.of_container(ref).names)


def check_containers(watch: ContainerWatch, scan_interval: float) -> None:
    """Refuse an id prefix that matches several containers; warn of selected containers not running yet."""
    for selector, ids in sorted(watch.ambiguous().items()):
        listed = ", ".join(sorted(i[:12] for i in ids))
        raise RunError(f"--container {selector} matches {len(ids)} containers: {listed}")
    for selector in watch.not_running():
        if scan_interval > 0:
            logger.warning("container %s is not running: it will be traced when it starts", selector)
        else:
            logger.warning("container %s is not running (and --container-scan-interval 0 never looks again)", selector)


def _container_rescan(
    probes: KernelProbes, watch: ContainerWatch, joined: Callable[[set[int]], None] | None = None
) -> Callable[[], None]:
    """A periodic job: trace processes of selected containers that started since the last look (and tell
    ``joined``, which hooks their TLS libraries)."""
    announced: set[str] = set()

    def rescan() -> None:
        found = watch.scan()
        if not found:
            return
        # Children of traced processes are in the kernel's table already (it follows forks).
        known = set(probes.target_pids())
        fresh = {pid: ref for pid, ref in found.items() if pid not in known}
        if not fresh:
            return
        probes.add_targets(set(fresh))
        if joined is not None:
            joined(set(fresh))
        for pid, ref in sorted(fresh.items()):
            first = ref.id not in announced
            announced.add(ref.id)
            logger.log(
                logging.INFO if first else logging.DEBUG,
                "now tracing pid %d (%s): it runs in selected container %s",
                pid,
                _comm(pid),
                ref.id[:12],
            )

    return rescan


def _comm(pid: int) -> str:
    try:
        return psutil.Process(pid).name()
    except psutil.Error:
        return "exited"


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Run until stopped; return the exit code."""
    lower_priority(args.nice, args.sched_idle)
    from otelbpf.probes import (
        FOLLOW_ALL,
        FOLLOW_EXECS,
        FOLLOW_NONE,
        TCP_TRACEPOINTS,
        TRACEPOINTS,
        KernelProbes,
        ProbeError,
        ProbeSettings,
        program_text,
        release_compiler_memory,
        render_cflags,
    )

    settings = ProbeSettings(
        capture_bytes=args.capture_bytes,
        resp_capture_bytes=args.response_capture_bytes,
        max_connections=args.max_connections,
        ringbuf_pages=args.ring_buffer_pages,
        tcp_facts=args.tcp_facts,
    )
    try:
        settings.cflags()
    except ValueError as exc:
        raise RunError(str(exc)) from exc
    try:
        linker_for(args)  # bad link flags fail here, before any probe is loaded
    except ValueError as exc:
        raise RunError(str(exc)) from exc
    check_scan_intervals(args)
    if args.ebpf:
        print(program_text())
        print("// cflags: " + " ".join(render_cflags(settings, {})))
        return 0

    spec = TargetSpec(pids=args.pid, exes=args.exe, ports=args.port, containers=args.container)
    containers = container_metadata(args, env)
    watch = container_watch(spec, containers)
    per_process = tls_per_process(args, spec)
    try:
        preflight.check_root()
        preflight.check_btf()
        preflight.check_tracepoints(TRACEPOINTS + (TCP_TRACEPOINTS if args.tcp_facts else []))
        preflight.check_kernel_headers()
        pids = resolve(spec, containers=watch)
        offsets = {**all_offsets(), **tracepoint_offsets(preflight.tracefs_root())}
        user_tls = user_libraries(args.tls_library) if args.tls else []
    except (preflight.PreflightError, TargetError, BtfError, TlsConfigError) as exc:
        raise RunError(str(exc)) from exc
    if watch is not None:
        check_containers(watch, args.container_scan_interval)
    if args.service_name:
        env = {**env, "OTEL_SERVICE_NAME": args.service_name}

    msettings = metrics_settings(args, env)
    recorder = _open_recorder(args)
    queue, destination = export_queue(args, env)
    try:
        probes = KernelProbes(settings, offsets)
    except ProbeError as exc:
        queue.shutdown(1.0)
        if recorder is not None:
            recorder.close()
        raise RunError(str(exc)) from exc
    from otelbpf.ringbuf import RingBufferReader

    follower: TlsFollower | None = None
    metrics: MetricsExporter | None = None
    try:
        self_pid = os.getpid()
        if not spec.trace_all:
            probes.add_target_comms(spec.exes)
            probes.add_targets(pids)
            # Compiling took seconds: what started meanwhile (a compose stack coming up with us) matched no
            # exec rule yet. Now that the kernel follows new execs and children, look once more.
            late = _late_targets(spec, watch, pids)
            if late:
                probes.add_targets(late)
                pids |= late
                logger.info("%d selected processes started while the probes were compiled; now traced", len(late))
        tls_wanted = _tls_wanted(args)
        follow = FOLLOW_NONE if not tls_wanted else FOLLOW_ALL if per_process else FOLLOW_EXECS
        probes.configure(
            self_pid, trace_all=spec.trace_all, max_per_second=args.max_spans_per_second, tls_follow=follow
        )
        reader = RingBufferReader(probes.ring_fd, probes.ring_size)
        # TLS libraries are hooked and followed on a thread of their own (otelbpf.tls_follow), not here.
        tls, follower = _start_tls(args, probes, spec, per_process, user_tls) if tls_wanted else (None, None)
        periodic: list[tuple[float, Callable[[], None]]] = []
        if spec.ports and args.port_scan_interval > 0:
            joined = follower.add_processes if follower is not None else None
            periodic.append((args.port_scan_interval, _port_rescan(probes, spec.ports, pids, joined)))
        if watch is not None and args.container_scan_interval > 0:
            joined = follower.add_processes if follower is not None else None
            periodic.append((args.container_scan_interval, _container_rescan(probes, watch, joined)))
        governor = None
        if args.adaptive:
            try:
                governor = LoadGovernor(
                    probes.set_rate_limit,
                    args.max_spans_per_second,
                    args.min_spans_per_second,
                    saturated=args.saturated_cpu_percent / 100,
                    collector_cpu=args.max_collector_cpu_percent / 100,
                )
            except ValueError as exc:
                raise RunError(str(exc)) from exc
            last = {"events": 0}

            def govern() -> None:
                events_now = probes.read_stats()["events"]
                governor.tick(events_now - last["events"], collector.take_active_pids())
                last["events"] = events_now

            periodic.append((1.0, govern))
        # Drawn here, not inside IdGenerator, so that a recording keeps it: replay then draws the same ids.
        seed = random.SystemRandom().getrandbits(64)
        requests = None
        if msettings is not None:
            tcp = [TcpMetrics(delta=msettings.histograms_delta)] if args.tcp_facts else []
            requests = RequestMetrics(delta=msettings.histograms_delta, also=tcp)
        collector = pipeline(
            args, env, probes, reader, queue, seed, recorder, periodic, metrics=requests, containers=containers
        )
        if msettings is not None and requests is not None:
            # The raw probes, not the recording's wrapper: it writes down only the exit summary's reads.
            metrics = start_metrics(
                msettings,
                requests,
                lambda final: collector.health(probes, count_in_flight=final),
                lambda: governor.limit if governor is not None else args.max_spans_per_second,
                env,
                __version__,
            )
        stop = threading.Event()
        install_signal_handlers(stop)
        what = spec.describe()
        also = "" if recorder is None else f"; recording to {recorder.path}"
        # The programs are compiled and loaded: LLVM's heap and code pages would otherwise stay resident
        # (about 80 MB of the collector's ~180 MB).
        released = release_compiler_memory()
        logger.debug("compiler code pages released: %.0f MiB", released / 2**20)
        print(
            f"otelbpf: ready: tracing {what} ({len(pids)} processes now); exporting to {destination}{also}",
            file=sys.stderr,
            flush=True,
        )
        # Everything made so far (bcc, gRPC, protobuf: hundreds of thousands of objects) lives until exit.
        # Frozen, the cyclic GC stops walking it on every full collection, which spans held for
        # linking (they live long enough to reach the oldest generation) trigger every few seconds.
        gc.freeze()
        collector.run(stop, args.duration or None)
        # Every finished span goes out before the summary, bounded so a dead backend cannot hang exit.
        queue.shutdown(timeout_s=10.0)
        if metrics is not None:
            metrics.shutdown(timeout_s=10.0)  # after the last spans were counted; bounded like the queue's
        if follower is not None:
            follower.stop()  # the summary below reads what it counted
        notes = _tls_notes(tls, probes.read_stats().get("task_events_lost", 0)) if tls is not None else {}
        if governor is not None:
            notes |= {
                "seconds traced at a reduced rate (CPUs saturated)": governor.stats.seconds_reduced,
                "lowest rate applied (requests/s)": governor.stats.lowest_limit,
            }
        if metrics is not None:
            notes |= metrics.notes()
        summary = collector.summary(destination, notes)
        print(summary.format(), file=sys.stderr, flush=True)
    finally:
        if metrics is not None:
            metrics.stop()  # a no-op after shutdown; on an error path, no last export
        if follower is not None:
            follower.stop()  # before the probes it attaches go
        probes.close()
        if recorder is not None:
            recorder.close()
    return 0 if recorder is None else _report_recording(recorder)


def pipeline(
    args: argparse.Namespace,
    env: Mapping[str, str],
    kernel: KernelSource,
    reader: RecordReader,
    queue: BatchQueue,
    seed: int,
    recorder: Recorder | None = None,
    periodic: list[tuple[float, Callable[[], None]]] | None = None,
    clock: ClockMap | None = None,
    containers: ContainerMetadata | None = None,
    metrics: RequestMetrics | None = None,
) -> Collector:
    """Span builder, linker and collector as the flags ask; a recorder also writes down every input they take."""
    ids = IdGenerator(seed)  # one id source for the builder and the linker
    resources = ResourceCache(env, containers=containers or container_metadata(args, env))
    builder = SpanBuilder(
        resources if recorder is None else recorder.resources(resources),  # type: ignore[arg-type]
        clock or ClockMap(),
        ids=ids,
        capture_query=args.capture_query,
        raw_db_query_text=args.raw_db_query_text,
    )
    refresh = builder.clock.maybe_refresh if recorder is None else recorder.clock_refresh(builder.clock)
    taps = {} if recorder is None else {"tap": recorder.tap, "clock": recorder.clock}
    collector = Collector(
        kernel if recorder is None else recorder.kernel(kernel),
        reader,
        builder,
        queue,
        args.capture_bytes,
        args.response_capture_bytes,
        periodic=[(5.0, refresh), *(periodic or [])],
        linker=linker_for(args, ids),
        metrics=metrics,
        **taps,  # type: ignore[arg-type]
    )
    if recorder is not None:
        recorder.start(recording_meta(args, seed), builder.clock)
    return collector


def _open_recorder(args: argparse.Namespace) -> Recorder | None:
    """The recording ``otelbpf record FILE`` writes; None for ``otelbpf run``."""
    if args.command != "record":
        return None
    try:
        return Recorder(args.file)
    except OSError as exc:
        raise RunError(f"cannot write the recording {args.file}: {exc.strerror or exc}") from exc


def recording_meta(args: argparse.Namespace, seed: int) -> dict:
    """What a recording must keep besides the records to rebuild the same spans: the options and the id seed."""
    return {
        "otelbpf": __version__,
        "host": socket.gethostname(),
        "recorded_at_unix_ns": time.time_ns(),
        "seed": seed,
        "capture_bytes": args.capture_bytes,
        "resp_capture_bytes": args.response_capture_bytes,
        "capture_query": args.capture_query,
        "raw_db_query_text": args.raw_db_query_text,
        "link_window": args.link_window,
        "link_max_hold": args.link_max_hold,
        "link_max_spans": args.link_max_spans,
    }


def _report_recording(recorder: Recorder) -> int:
    """One line on what was recorded; exit code 1 when a write failed (tracing went on, the file is short)."""
    if recorder.error:
        print(f"otelbpf: error: {recorder.error}: the recording is incomplete", file=sys.stderr, flush=True)
        return 1
    print(
        f"otelbpf: recorded {recorder.records} records in {recorder.batches} batches "
        f"({recorder.bytes / 2**20:.1f} MiB) to {recorder.path}",
        file=sys.stderr,
        flush=True,
    )
    return 0
