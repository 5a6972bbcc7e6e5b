"""Command line: ``otelbpf run``, ``otelbpf record FILE`` and ``otelbpf replay FILE``.

Traces unmodified processes from the kernel and exports their HTTP requests as OpenTelemetry spans.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Mapping, Sequence

from otelbpf import __version__

logger = logging.getLogger("otelbpf")

EXAMPLES = """examples:
  otelbpf run                                  # trace every process, print traces in the terminal
  otelbpf run --pid 1234 --pid 5678            # only these processes (and their children)
  otelbpf run --exe nginx                      # nginx, running now or started later
  otelbpf run --port 8080 --duration 60        # whatever listens on :8080, for a minute
  otelbpf run --container shop-api             # a container by name or id, running now or started later
  otelbpf run --otlp-endpoint http://localhost:4317                       # OTLP/gRPC
  otelbpf run --otlp-endpoint http://localhost:4318 --otlp-protocol http/protobuf
  OTEL_EXPORTER_OTLP_ENDPOINT=http://tempo:4317 otelbpf run --exe python3
"""

RECORD_EXAMPLES = """examples:
  otelbpf record nginx.rec --exe nginx --duration 60     # trace as `run` does, and keep every record
  otelbpf replay nginx.rec                                # the same spans again, in the terminal
  otelbpf replay nginx.rec --otlp-endpoint http://localhost:4317
"""


CHECK_EXAMPLES = """Exit status 1 when otelbpf cannot run here (a basic feature missing), else 0.
examples:
  otelbpf check                                # the kernel, privileges, bcc and /usr/bin/python3's USDT probes
  otelbpf check --pid 1234                     # and the TLS libraries process 1234 maps
  otelbpf check --python /opt/app/bin/python   # another interpreter's USDT probes
"""


# Integer tunables: flag, environment variable, default, help.
INT_TUNABLES = [
    (
        "--max-spans-per-second",
        "OTELBPF_MAX_SPANS_PER_SECOND",
        20000,
        "shed requests beyond this rate in the kernel, counted; 0: no limit",
    ),
    (
        "--min-spans-per-second",
        "OTELBPF_MIN_SPANS_PER_SECOND",
        1000,
        "rate tracing backs off to while the CPUs are saturated (see --no-adaptive)",
    ),
    ("--capture-bytes", "OTELBPF_CAPTURE_BYTES", 512, "request head bytes kept per request, a power of two"),
    (
        "--response-capture-bytes",
        "OTELBPF_RESPONSE_CAPTURE_BYTES",
        256,
        "response bytes kept per request where a protocol reads them (database replies), a power of two",
    ),
    ("--ring-buffer-pages", "OTELBPF_RING_BUFFER_PAGES", 1024, "kernel ring buffer size in pages, a power of two"),
    ("--max-connections", "OTELBPF_MAX_CONNECTIONS", 65536, "connections tracked at once in the kernel"),
    (
        "--saturated-cpu-percent",
        "OTELBPF_SATURATED_CPU_PERCENT",
        80,
        "machine CPU busy percentage above which tracing backs off",
    ),
    (
        "--max-collector-cpu-percent",
        "OTELBPF_MAX_COLLECTOR_CPU_PERCENT",
        15,
        "on a busy machine, collector CPU (percent of one CPU) above which tracing backs off",
    ),
    ("--nice", "OTELBPF_NICE", 10, "scheduling niceness of the collector, so it yields CPU to the traced apps"),
]


def _env_number(env: Mapping[str, str], name: str, default: int | float) -> int | float:
    """The environment's value for a numeric tunable, parsed as the default's type (int or float)."""
    value = env.get(name)
    if value is None or value == "":
        return default
    kind = type(default)
    try:
        return kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise SystemExit(f"otelbpf: error: {name}={value!r} is not {what}") from None


def _env_bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"otelbpf: error: {name}={value!r} is not a boolean (true or false)")


def build_parser(env: Mapping[str, str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; defaults come from the environment where one applies."""
    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="otelbpf", description=__doc__.splitlines()[2])
    parser.add_argument("--version", action="version", version=f"otelbpf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="trace processes and export spans",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_trace_options(run, env)
    record = sub.add_parser(
        "record",
        help="trace as `run` does, and also write every kernel record to FILE for `replay`",
        epilog=RECORD_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    record.add_argument("file", metavar="FILE", help="the recording to write (replaced if it exists)")
    _add_trace_options(record, env)
    replay = sub.add_parser(
        "replay",
        help="export a recording's spans again, offline: no root, no kernel",
        epilog=RECORD_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check = sub.add_parser(
        "check",
        help="say what this kernel, this machine and the given targets support, one line per feature",
        epilog=CHECK_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument(
        "--pid", type=int, action="append", default=[], metavar="PID", help="list the TLS libraries this process maps"
    )
    check.add_argument(
        "--python",
        action="append",
        default=None,
        metavar="PATH",
        help="look for CPython's function USDT probes in this interpreter (default: /usr/bin/python3, else python3 "
        "on PATH)",
    )
    check.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    replay.add_argument("file", metavar="FILE", help="a recording written by `otelbpf record`")
    _add_export_options(replay.add_argument_group("export (no endpoint: traces are printed in the terminal)"))
    replay.add_argument(
        "--speed",
        type=float,
        default=0.0,
        metavar="FACTOR",
        help="1: at the recorded pace, 2: twice as fast; 0: as fast as possible (default)",
    )
    replay.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def _add_export_options(out: argparse._ArgumentGroup) -> None:
    """Where spans go: the flags `run`, `record` and `replay` share."""
    out.add_argument(
        "--otlp-endpoint",
        metavar="URL",
        help="OTLP endpoint (env OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT)",
    )
    out.add_argument(
        "--otlp-protocol",
        choices=["grpc", "http/protobuf"],
        help="OTLP protocol (env OTEL_EXPORTER_OTLP_PROTOCOL; default grpc)",
    )
    out.add_argument(
        "--otlp-headers",
        metavar="K=V,...",
        help="headers sent with each export (env OTEL_EXPORTER_OTLP_HEADERS)",
    )
    out.add_argument(
        "--queue-size",
        type=int,
        default=None,
        help="spans held while the backend is slow (env OTEL_BSP_MAX_QUEUE_SIZE; default 20000)",
    )
    out.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="spans per export request (env OTEL_BSP_MAX_EXPORT_BATCH_SIZE; default 512)",
    )
    out.add_argument("--no-color", action="store_true", help="plain terminal output")


def _add_trace_options(run: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """The flags of `run`, which `record` takes too."""
    sel = run.add_argument_group("what to trace (none given: every process)")
    sel.add_argument(
        "--pid",
        type=int,
        action="append",
        default=[],
        metavar="PID",
        help="trace this process and its children (repeatable)",
    )
    sel.add_argument(
        "--exe",
        action="append",
        default=[],
        metavar="NAME",
        help="trace processes running this program, now or started later (repeatable)",
    )
    sel.add_argument(
        "--port",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help="trace processes listening on this TCP port (repeatable)",
    )
    sel.add_argument(
        "--port-scan-interval",
        type=float,
        default=_env_number(env, "OTELBPF_PORT_SCAN_INTERVAL", 5.0),
        metavar="SECONDS",
        help="how often listeners on --port are looked up again, so servers started later join; 0: only at "
        "start (env OTELBPF_PORT_SCAN_INTERVAL; default 5)",
    )
    sel.add_argument(
        "--container",
        action="append",
        # append onto an environment default would merge the two; flags replace it instead (parse_args).
        default=None,
        metavar="ID|NAME",
        help="trace the processes of this container: a full id, an id prefix (4+ hex digits), a name, or "
        "NAMESPACE/POD/CONTAINER under Kubernetes; running now or started later (repeatable; env "
        "OTELBPF_CONTAINERS, comma-separated)",
    )
    sel.add_argument(
        "--container-scan-interval",
        type=float,
        default=_env_number(env, "OTELBPF_CONTAINER_SCAN_INTERVAL", 1.0),
        metavar="SECONDS",
        help="how often new processes are checked against --container, so containers started later join "
        "(within about this long); 0: only at start (env OTELBPF_CONTAINER_SCAN_INTERVAL; default 1)",
    )
    meta = run.add_argument_group("container and pod metadata (resource attributes)")
    meta.add_argument(
        "--docker-socket",
        default=None,
        metavar="PATH",
        help="Docker Engine API socket asked for container names and images (env OTELBPF_DOCKER_SOCKET, "
        "else DOCKER_HOST=unix://PATH; default /var/run/docker.sock)",
    )
    meta.add_argument(
        "--docker-dir",
        default=env.get("OTELBPF_DOCKER_DIR") or "/var/lib/docker/containers",
        metavar="DIR",
        help="Docker's container state directory, read when the socket cannot be (env OTELBPF_DOCKER_DIR; "
        "default /var/lib/docker/containers)",
    )
    meta.add_argument(
        "--kube-log-dir",
        default=env.get("OTELBPF_KUBE_LOG_DIR") or "/var/log",
        metavar="DIR",
        help="where the kubelet's containers/ and pods/ log directories are, which name each container's "
        "pod, namespace and container (env OTELBPF_KUBE_LOG_DIR; default /var/log)",
    )
    meta.add_argument(
        "--no-kube-api",
        dest="kube_api",
        action="store_false",
        default=_env_bool(env, "OTELBPF_KUBE_API", True),
        help="do not ask the Kubernetes API for pods' labels and owners, even with a service account token "
        "(env OTELBPF_KUBE_API=false)",
    )
    out = run.add_argument_group("export (no endpoint: traces are printed in the terminal)")
    _add_export_options(out)
    out.add_argument(
        "--service-name", metavar="NAME", help="override service.name for every span (env OTEL_SERVICE_NAME)"
    )
    out.add_argument(
        "--capture-query",
        action="store_true",
        default=_env_bool(env, "OTELBPF_CAPTURE_QUERY", False),
        help="export url.query (off by default: query strings often carry secrets)",
    )
    out.add_argument(
        "--raw-db-query-text",
        action="store_true",
        default=_env_bool(env, "OTELBPF_RAW_DB_QUERY_TEXT", False),
        help="export db.query.text with its literals (off by default: they are replaced with ?)",
    )
    out.add_argument(
        "--no-tcp-facts",
        dest="tcp_facts",
        action="store_false",
        default=_env_bool(env, "OTELBPF_TCP_FACTS", True),
        help="leave the kernel's TCP facts (otelbpf.tcp.*: retransmits, RTT, connect time, resets) off spans, "
        "and make no spans of failed connects; saves their hooks (env OTELBPF_TCP_FACTS=false)",
    )
    metrics = run.add_argument_group("metrics (with an OTLP endpoint: request durations and otelbpf's own counters)")
    metrics.add_argument(
        "--no-metrics",
        dest="metrics",
        action="store_false",
        help="export no metrics (env OTEL_METRICS_EXPORTER=none)",
    )
    metrics.add_argument(
        "--metric-export-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how often metrics are exported (env OTEL_METRIC_EXPORT_INTERVAL, in ms; default 60 s)",
    )
    metrics.add_argument(
        "--metric-temporality",
        choices=["cumulative", "delta", "lowmemory"],
        default=None,
        help="aggregation temporality (env OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE; default cumulative)",
    )
    tune = run.add_argument_group("limits")
    tune.add_argument(
        "--duration",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="stop after this long (default: until SIGINT/SIGTERM)",
    )
    for flag, env_name, default, text in INT_TUNABLES:
        tune.add_argument(
            flag,
            type=int,
            default=_env_number(env, env_name, default),
            metavar="N",
            help=f"{text} (env {env_name}; default {default})",
        )
    tune.add_argument(
        "--sched-idle",
        action=argparse.BooleanOptionalAction,
        default=_env_bool(env, "OTELBPF_SCHED_IDLE", True),
        help="run the collector under SCHED_IDLE, only on CPU time the applications leave unused; if it falls "
        "behind, the loss is counted (env OTELBPF_SCHED_IDLE; default on, else --nice applies)",
    )
    tune.add_argument(
        "--no-adaptive",
        dest="adaptive",
        action="store_false",
        default=_env_bool(env, "OTELBPF_ADAPTIVE", True),
        help="keep tracing at --max-spans-per-second even while the CPUs are saturated (env OTELBPF_ADAPTIVE=false)",
    )
    tls = run.add_argument_group("HTTPS (uprobes on OpenSSL and GnuTLS)")
    tls.add_argument(
        "--no-tls",
        dest="tls",
        action="store_false",
        default=_env_bool(env, "OTELBPF_TLS", True),
        help="do not hook TLS libraries: HTTPS requests are then not traced (env OTELBPF_TLS=false)",
    )
    tls.add_argument(
        "--tls-library",
        action="append",
        # append onto an environment default would merge the two; flags replace it instead (main()).
        default=None,
        metavar="PATH",
        help="also hook this library or binary, before any process maps it (repeatable; env "
        "OTELBPF_TLS_LIBRARIES, comma-separated). The system's libssl/libgnutls and whatever traced "
        "processes map are found without it",
    )
    tls.add_argument(
        "--tls-scan-interval",
        type=float,
        default=_env_number(env, "OTELBPF_TLS_SCAN_INTERVAL", 1.0),
        metavar="SECONDS",
        help="how often traced processes are scanned for newly mapped TLS libraries; 0: only at start "
        "(env OTELBPF_TLS_SCAN_INTERVAL; default 1)",
    )
    tls.add_argument(
        "--tls-attach",
        choices=["auto", "per-process", "file-wide"],
        default=env.get("OTELBPF_TLS_ATTACH") or "auto",
        help="per-process: a library's probes fire only in traced processes, so others pay nothing, but a "
        "process started later runs unhooked for one kernel grace period (5-120 ms here) and a client that "
        "is quicker loses its first requests; file-wide: every process mapping the library pays, and new "
        "ones are hooked from their first call; auto: file-wide when tracing every process, per-process "
        "with --pid/--exe/--port, and the system's libraries file-wide too when the selection's TLS will come "
        "from programs not started yet (a --pid that maps no TLS library, an --exe nothing runs yet) "
        "(env OTELBPF_TLS_ATTACH; default auto)",
    )
    tls.add_argument(
        "--tls-max-process-probes",
        type=int,
        default=_env_number(env, "OTELBPF_TLS_MAX_PROCESS_PROBES", 512),
        metavar="N",
        help="with --pid/--exe/--port, TLS probes go on per traced process (8 for OpenSSL, 4 for GnuTLS, "
        "each a file descriptor); past N live ones, a library is hooked file-wide instead and every "
        "process mapping it pays (env OTELBPF_TLS_MAX_PROCESS_PROBES; default 512)",
    )
    link = run.add_argument_group("traces (spans linked by thread, connection and traceparent)")
    link.add_argument(
        "--link-window",
        type=float,
        default=_env_number(env, "OTELBPF_LINK_WINDOW", 0.5),
        metavar="SECONDS",
        help="how long a trace must be quiet before its spans are sent; 0: no linking, each span is sent "
        "at once as its own trace unless it carried a traceparent (env OTELBPF_LINK_WINDOW; default 0.5)",
    )
    link.add_argument(
        "--link-max-hold",
        type=float,
        default=_env_number(env, "OTELBPF_LINK_MAX_HOLD", 10.0),
        metavar="SECONDS",
        help="how long spans wait for a parent request still running; then they go out under ids "
        "reserved for it (env OTELBPF_LINK_MAX_HOLD; default 10)",
    )
    link.add_argument(
        "--link-max-spans",
        type=int,
        default=_env_number(env, "OTELBPF_LINK_MAX_SPANS", 100000),
        metavar="N",
        help="most spans held for linking; past it the oldest trees go out early, counted "
        "(env OTELBPF_LINK_MAX_SPANS; default 100000)",
    )
    run.add_argument("--ebpf", action="store_true", help=argparse.SUPPRESS)  # print the C and flags, exit
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def parse_args(argv: Sequence[str] | None, env: Mapping[str, str]) -> argparse.Namespace:
    """Parse the command line; list options given no flag take their environment variable."""
    args = build_parser(env).parse_args(argv)
    if getattr(args, "tls_library", []) is None:
        args.tls_library = [p.strip() for p in env.get("OTELBPF_TLS_LIBRARIES", "").split(",") if p.strip()]
    if getattr(args, "container", []) is None:
        args.container = [c.strip() for c in env.get("OTELBPF_CONTAINERS", "").split(",") if c.strip()]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``otelbpf`` command."""
    args = parse_args(argv, os.environ)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="otelbpf: %(levelname)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "check":
        from otelbpf.check import report, run_checks

        text, code = report(run_checks(args.pid, args.python))
        print(text)
        return code
    from otelbpf.runner import RunError, run

    try:
        if args.command == "replay":
            from otelbpf.replay import replay

            return replay(args, os.environ)
        return run(args, os.environ)
    except RunError as exc:
        print(f"otelbpf: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
